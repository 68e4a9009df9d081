"""Private modules stay private in the shared cache; node credentials; registry mirrors."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import grpc
import pytest
from support.driver import StartDriver
from support.kubelet import Kubelet, dockerconfigjson, rpc_error
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module


@pytest.fixture
def kubelet(start_driver: StartDriver, registry: Registry, auth_registry: Registry) -> Kubelet:
    return start_driver(insecure_registries=frozenset({registry.host, auth_registry.host}))


def _secret(registry: Registry, password: str | None = None) -> dict[str, str]:
    username, real = registry.credentials
    return dockerconfigjson(registry.host, username, password or real)


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_cached_private_module_needs_working_credentials(
    kubelet: Kubelet, auth_registry: Registry, unique_repo: str, by: str
) -> None:
    module = make_module(4096, f"private-{by}")
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", module)
    url = pushed.reference if by == "tag" else pushed.digest_reference
    owner = kubelet.new_pod(name="owner")
    kubelet.publish(owner, {"url": url}, secrets=_secret(auth_registry))

    for secrets in (None, _secret(auth_registry, "wrong-password")):
        intruder = kubelet.new_pod(name="intruder")
        code, message = rpc_error(
            lambda: kubelet.publish(intruder, {"url": url}, secrets=secrets)  # noqa: B023
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, message
        assert not intruder.target.exists()

    # the sha256 alone must not open the cache either
    sneaky = kubelet.new_pod(name="sneaky")
    code, _ = rpc_error(
        lambda: kubelet.publish(sneaky, {"url": url, "sha256": pushed.module_sha256})
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED

    friend = kubelet.new_pod(name="friend")
    before = auth_registry.mark()
    kubelet.publish(friend, {"url": url}, secrets=_secret(auth_registry))
    assert (friend.target / "plugin.wasm").read_bytes() == module
    assert auth_registry.requests_matching("GET", rf"/v2/{unique_repo}/blobs/.*", since=before) == 0


def test_verified_credentials_are_reused_within_the_window(
    kubelet: Kubelet, auth_registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", make_module(2048, "window"))
    kubelet.publish(kubelet.new_pod(), {"url": pushed.reference}, secrets=_secret(auth_registry))
    before = auth_registry.mark()
    for _ in range(3):
        kubelet.publish(
            kubelet.new_pod(), {"url": pushed.reference}, secrets=_secret(auth_registry)
        )
    assert auth_registry.requests_matching("GET", rf"/v2/{unique_repo}/.*", since=before) == 0


def test_anonymous_modules_are_shared_without_requests(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(2048, "public"))
    kubelet.publish(kubelet.new_pod(), {"url": pushed.reference})
    before = registry.mark()
    kubelet.publish(kubelet.new_pod(), {"url": pushed.reference})
    assert registry.requests_matching("GET", rf"/v2/{unique_repo}/.*", since=before) == 0


def test_node_docker_config_is_used_when_the_pod_has_no_secret(
    start_driver: StartDriver, auth_registry: Registry, unique_repo: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(_secret(auth_registry)[".dockerconfigjson"])
    kubelet = start_driver(
        insecure_registries=frozenset({auth_registry.host}), docker_config=str(config)
    )
    module = make_module(2048, "node-creds")
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference})
    assert (pod.target / "plugin.wasm").read_bytes() == module


def _dead_host() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"127.0.0.1:{port}"


def test_mirror_serves_the_pull(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    source = _dead_host()  # the source is down: only the mirror can answer
    module = make_module(2048, "mirrored")
    push_wasm_artifact(registry, f"cache/{unique_repo}", "v1", module)
    kubelet = start_driver(
        insecure_registries=frozenset({registry.host, source}),
        registry_mirrors=(f"{source}={registry.host}/cache",),
    )
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": f"{source}/{unique_repo}:v1"})
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_a_failing_mirror_falls_back_to_the_source(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    mirror = _dead_host()
    module = make_module(2048, "fallback")
    pushed: PushedModule = push_wasm_artifact(registry, unique_repo, "v1", module)
    kubelet = start_driver(
        insecure_registries=frozenset({registry.host, mirror}),
        registry_mirrors=(f"{registry.host}={mirror}",),
    )
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference})
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_mirror_cannot_change_what_a_digest_names(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    source = _dead_host()
    genuine = make_module(2048, "genuine")
    impostor = push_wasm_artifact(registry, unique_repo, "v1", make_module(2048, "impostor"))
    kubelet = start_driver(
        insecure_registries=frozenset({registry.host, source}),
        registry_mirrors=(f"{source}={registry.host}",),
    )
    pod = kubelet.new_pod()
    code, message = rpc_error(
        lambda: kubelet.publish(
            pod,
            {"url": f"{source}/{unique_repo}:v1", "sha256": hashlib.sha256(genuine).hexdigest()},
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert impostor.module_sha256 in message
