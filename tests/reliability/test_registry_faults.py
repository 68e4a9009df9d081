"""A fault-injecting proxy between the driver and a real registry.

Each persistent fault must give the contract's code (README, "Errors") before the RPC's
deadline, leave nothing in the cache or in ``<root>/tmp``, and the retry must succeed
once the fault clears. Short bursts must be absorbed by the driver's own retries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from support.driver import NodeDirs, in_process
from support.kubelet import Kubelet, rpc_error
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from .faultproxy import Fault, FaultProxy
from .harness import assert_cache_verified, assert_nothing_left, assert_served, tmp_files

RPC_TIMEOUT = 20.0
PULL_TIMEOUT = 2.0  # a dripping registry must be cut off by the pull's own deadline
Code = grpc.StatusCode

PERSISTENT = [
    pytest.param(Fault("status", status=503), Code.UNAVAILABLE, id="blob-503"),
    pytest.param(Fault("status", "manifests", status=502), Code.UNAVAILABLE, id="manifest-502"),
    pytest.param(Fault("reset"), Code.UNAVAILABLE, id="blob-reset"),
    pytest.param(Fault("reset", "manifests"), Code.UNAVAILABLE, id="manifest-reset"),
    pytest.param(Fault("truncate"), Code.UNAVAILABLE, id="blob-truncated"),
    pytest.param(Fault("truncate", "manifests"), Code.UNAVAILABLE, id="manifest-truncated"),
    pytest.param(Fault("drip"), Code.DEADLINE_EXCEEDED, id="blob-drip"),
    pytest.param(Fault("drip", "manifests"), Code.DEADLINE_EXCEEDED, id="manifest-drip"),
    pytest.param(Fault("corrupt"), Code.FAILED_PRECONDITION, id="blob-wrong-digest"),
    pytest.param(
        Fault("corrupt", "manifests"), Code.FAILED_PRECONDITION, id="manifest-wrong-digest"
    ),
    pytest.param(Fault("throttle", retry_after="1"), Code.UNAVAILABLE, id="blob-429"),
    pytest.param(
        Fault("throttle", retry_after="3600"), Code.UNAVAILABLE, id="blob-429-past-deadline"
    ),
]

BURSTS = [
    pytest.param(Fault("status", status=503, times=2), id="two-503s"),
    pytest.param(Fault("status", "manifests", status=500, times=1), id="one-manifest-500"),
    pytest.param(Fault("reset", times=2), id="two-resets"),
    pytest.param(Fault("throttle", retry_after="1", times=1), id="one-429-retry-after-1s"),
]


@pytest.fixture
def kubelet(node_dirs: NodeDirs, registry: Registry, proxy: FaultProxy) -> Iterator[Kubelet]:
    settings = node_dirs.settings(
        insecure_registries=frozenset({registry.host, proxy.host}), pull_timeout=PULL_TIMEOUT
    )
    with in_process(node_dirs, settings) as (_driver, kubelet):
        yield kubelet


def _push(registry: Registry, repo: str) -> PushedModule:
    return push_wasm_artifact(registry, repo, "v1", make_module(512 * 1024, repo))


@pytest.mark.parametrize(("fault", "code"), PERSISTENT)
def test_persistent_fault_gives_the_contract_code_then_retry_succeeds(
    fault: Fault,
    code: grpc.StatusCode,
    kubelet: Kubelet,
    node_dirs: NodeDirs,
    registry: Registry,
    proxy: FaultProxy,
    unique_repo: str,
) -> None:
    pushed = _push(registry, unique_repo)
    attributes = {"url": f"{proxy.host}/{unique_repo}:v1"}
    proxy.inject(fault)
    pod = kubelet.new_pod()

    started = time.monotonic()
    got, message = rpc_error(lambda: kubelet.publish(pod, attributes, timeout=RPC_TIMEOUT))
    elapsed = time.monotonic() - started
    assert (got, proxy.broken > 0) == (code, True), message
    assert elapsed < RPC_TIMEOUT - 1, f"answered after {elapsed:.1f}s"
    assert message != "Deadline Exceeded"  # the driver's own answer, not grpc's timeout
    assert assert_cache_verified(node_dirs) == set()
    assert tmp_files(node_dirs) == []
    assert_nothing_left(node_dirs, [pod])

    proxy.clear()
    kubelet.publish(pod, attributes, timeout=RPC_TIMEOUT)
    assert_served(pod, pushed.module_sha256)
    kubelet.unpublish(pod)
    assert_nothing_left(node_dirs, [pod])


@pytest.mark.parametrize("fault", BURSTS)
def test_short_bursts_are_absorbed(
    fault: Fault,
    kubelet: Kubelet,
    node_dirs: NodeDirs,
    registry: Registry,
    proxy: FaultProxy,
    unique_repo: str,
) -> None:
    pushed = _push(registry, unique_repo)
    attributes = {"url": f"{proxy.host}/{unique_repo}:v1"}
    proxy.inject(fault)
    pod = kubelet.new_pod()
    started = time.monotonic()
    kubelet.publish(pod, attributes, timeout=RPC_TIMEOUT)
    elapsed = time.monotonic() - started
    assert proxy.broken == fault.times
    if fault.kind == "throttle":
        assert elapsed >= 1.0, "Retry-After was not honoured"
    assert_served(pod, pushed.module_sha256)
    kubelet.unpublish(pod)
    assert_nothing_left(node_dirs, [pod])
