"""JSON nested deeper than Python's recursion limit, from a registry, a token service or a
pull secret, is refused with the contract's code, never INTERNAL.

``json.loads`` raises RecursionError (not ValueError) for such input: 40 KB of ``[``
is enough, well under every size bound, so any registry or pod author could send it.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from support.driver import NodeDirs, in_process
from support.kubelet import Kubelet, rpc_error
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.errors import FailedPrecondition, InvalidArgument
from csi_wasm.formats import choose_manifest, is_index, mediatypes, parse_image_manifest
from csi_wasm.registry import Keychain

from .faultproxy import Fault, FaultProxy
from .harness import assert_cache_verified, assert_nothing_left, assert_served

DEEP_ARRAY = b"[" * 20_000 + b"]" * 20_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
Code = grpc.StatusCode


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_formats_refuse_deep_json(body: bytes) -> None:
    assert is_index(mediatypes.OCI_INDEX, body) is False
    with pytest.raises(FailedPrecondition):
        parse_image_manifest(body, mediatypes.OCI_MANIFEST, "reg/x:v1")
    with pytest.raises(FailedPrecondition):
        choose_manifest(body, mediatypes.OCI_INDEX, "reg/x:v1")


def test_pull_secret_with_deep_json_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        Keychain.from_dockerconfigjson(DEEP_ARRAY.decode())


@pytest.fixture
def kubelet(node_dirs: NodeDirs, registry: Registry, proxy: FaultProxy) -> Iterator[Kubelet]:
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host, proxy.host}))
    with in_process(node_dirs, settings) as (_driver, kubelet):
        yield kubelet


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        pytest.param(
            Fault("body", "manifests", status=200, body=DEEP_ARRAY),
            Code.FAILED_PRECONDITION,
            id="manifest",
        ),
        pytest.param(
            Fault("body", "manifests", status=404, body=DEEP_ARRAY),
            Code.NOT_FOUND,
            id="404-error-body",
        ),
        pytest.param(
            Fault("bearer", "manifests", body=DEEP_OBJECT),
            Code.FAILED_PRECONDITION,
            id="token-response",
        ),
    ],
)
def test_deep_json_from_the_registry(
    fault: Fault,
    code: grpc.StatusCode,
    kubelet: Kubelet,
    node_dirs: NodeDirs,
    registry: Registry,
    proxy: FaultProxy,
    unique_repo: str,
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(4096, unique_repo))
    attributes = {"url": f"{proxy.host}/{unique_repo}:v1"}
    pod = kubelet.new_pod()
    proxy.inject(fault)
    got, message = rpc_error(lambda: kubelet.publish(pod, attributes))
    assert (got, proxy.broken > 0) == (code, True), message
    assert assert_cache_verified(node_dirs) == set()
    if fault.kind == "bearer":  # the token service is fixed: the registry keeps its auth
        proxy.inject(Fault("bearer", "manifests", body=b'{"token": "t0k3n"}'))
    else:
        proxy.clear()
    kubelet.publish(pod, attributes)
    assert_served(pod, pushed.module_sha256)
    kubelet.unpublish(pod)
    assert_nothing_left(node_dirs, [pod])


def test_deep_json_in_the_pull_secret(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(4096, unique_repo))
    pod = kubelet.new_pod()
    secrets = {".dockerconfigjson": DEEP_ARRAY.decode()}
    got, message = rpc_error(
        lambda: kubelet.publish(pod, {"url": pushed.reference}, secrets=secrets)
    )
    assert got == Code.INVALID_ARGUMENT, message
