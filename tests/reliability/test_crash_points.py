"""kill -9 the driver at many points of publish and unpublish, restart it, check invariants.

After every crash:

* nothing unverified is served: every module in the cache hashes to its name, and a
  target shows the module only through one read-only mount of verified bytes;
* kubelet's retry of the interrupted call succeeds, and so does the next publish;
* once the pods are unpublished no mount, target or record is left.

Points inside the driver come from :mod:`reliability.crashing_driver` (the process
kills itself when it reaches a system call on its own paths); "mid-download" is chosen
from outside: the blob is held half sent by the fault proxy, and the driver is killed
once its temp file under ``<root>/tmp`` holds those bytes.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import grpc
import pytest
from support.driver import NodeDirs, connect, wait_for
from support.kubelet import Kubelet, PodVolume, rpc_error
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2

from .conftest import StartProcess
from .faultproxy import Fault, FaultProxy
from .harness import (
    Process,
    assert_cache_verified,
    assert_nothing_left,
    assert_served,
    mounts_at,
    tmp_files,
)

PUBLISH_POINTS = [
    "downloaded",  # blob fetched and hashed, still in tmp/, not yet staged
    "staged",  # staging directory complete, not yet renamed into modules/
    "committed",  # module in modules/, index not yet written
    "indexed",  # first index entry written, the rest not
    "record-written",  # volume record in place, nothing mounted
    "bind",  # bind mount done, read-only remount not (a writable mount exists)
    "remount",  # read-only mount done, not yet checked or answered
]
UNPUBLISH_POINTS = ["unmounted", "target-removed"]


def _module(registry: Registry, repo: str, size: int = 256 * 1024) -> PushedModule:
    return push_wasm_artifact(registry, repo, "v1", make_module(size, repo))


def _crash_publish(kubelet: Kubelet, pod: PodVolume, attributes: dict[str, str]) -> None:
    code, message = rpc_error(lambda: kubelet.publish(pod, attributes, timeout=30))
    assert code == grpc.StatusCode.UNAVAILABLE, message  # the connection died with the driver


def _after_restart(
    kubelet: Kubelet, dirs: NodeDirs, pod: PodVolume, attributes: dict[str, str], sha: str
) -> None:
    """kubelet retries the interrupted publish, publishes one more pod, unpublishes both."""
    kubelet.publish(pod, attributes)
    assert_served(pod, sha)
    other = kubelet.new_pod(name="next")
    kubelet.publish(other, attributes)
    assert_served(other, sha)
    assert assert_cache_verified(dirs) == {sha}
    kubelet.unpublish(pod)
    kubelet.unpublish(other)
    assert_nothing_left(dirs, [pod, other])


@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_crash_during_publish_then_retry(
    point: str,
    start_process: StartProcess,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    pushed = _module(registry, unique_repo)
    attributes = {"url": pushed.reference}
    crashing = start_process(crash_at=point)
    with connect(node_dirs) as kubelet:
        pod = kubelet.new_pod()
        _crash_publish(kubelet, pod, attributes)
    crashing.wait_killed()
    assert_cache_verified(node_dirs)
    if point == "bind":
        assert mounts_at(pod.target) != [], "the crash point was not between bind and remount"

    driver = start_process()
    assert tmp_files(node_dirs) == []
    with connect(node_dirs) as kubelet:
        _after_restart(kubelet, node_dirs, pod, attributes, pushed.module_sha256)
    assert driver.terminate() == 0


@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_crash_during_publish_then_pod_deleted(
    point: str,
    start_process: StartProcess,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    """kubelet gives up on the pod instead: its unpublish must leave nothing behind."""
    pushed = _module(registry, unique_repo)
    attributes = {"url": pushed.reference}
    crashing = start_process(crash_at=point)
    with connect(node_dirs) as kubelet:
        pod = kubelet.new_pod()
        _crash_publish(kubelet, pod, attributes)
    crashing.wait_killed()

    start_process()
    with connect(node_dirs) as kubelet:
        kubelet.unpublish(pod)
        assert_nothing_left(node_dirs, [pod])
        again = kubelet.new_pod(name="again")
        kubelet.publish(again, attributes)
        assert_served(again, pushed.module_sha256)
        kubelet.unpublish(again)
    assert_nothing_left(node_dirs, [pod, again])
    assert assert_cache_verified(node_dirs) == {pushed.module_sha256}


@pytest.mark.parametrize("point", UNPUBLISH_POINTS)
def test_crash_during_unpublish_then_retry(
    point: str,
    start_process: StartProcess,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    pushed = _module(registry, unique_repo)
    attributes = {"url": pushed.reference}
    crashing = start_process(crash_at=point)
    with connect(node_dirs) as kubelet:
        pod = kubelet.new_pod()
        kubelet.publish(pod, attributes)
        assert_served(pod, pushed.module_sha256)
        code, message = rpc_error(lambda: kubelet.unpublish(pod))
        assert code == grpc.StatusCode.UNAVAILABLE, message
    crashing.wait_killed()
    assert mounts_at(pod.target) == []

    start_process()
    with connect(node_dirs) as kubelet:
        kubelet.unpublish(pod)  # kubelet's retry
        assert_nothing_left(node_dirs, [pod])
        again = kubelet.new_pod(name="again")
        kubelet.publish(again, attributes)
        assert_served(again, pushed.module_sha256)
        kubelet.unpublish(again)
    assert_nothing_left(node_dirs, [pod, again])


def test_kill_mid_download_then_retry(
    start_process: StartProcess,
    node_dirs: NodeDirs,
    registry: Registry,
    proxy: FaultProxy,
    unique_repo: str,
) -> None:
    """SIGKILL while half the blob is in ``<root>/tmp``: the half is never served."""
    size = 4 * 1024 * 1024
    pushed = _module(registry, unique_repo, size)
    attributes = {"url": f"{proxy.host}/{unique_repo}:v1"}
    proxy.inject(Fault("stall", stall_after=size // 2))
    driver = start_process(extra_args=["--insecure-registry", proxy.host])
    with connect(node_dirs) as kubelet:
        pod = kubelet.new_pod()
        call = kubelet.node.NodePublishVolume.future(
            kubelet.publish_request(pod, attributes), timeout=30
        )
        wait_for(
            # what the proxy sent, less what the driver's file buffer still holds
            lambda: any(
                p.is_file() and p.stat().st_size >= size // 2 - 64 * 1024
                for p in tmp_files(node_dirs)
            ),
            timeout=20,
            what="half the blob in <root>/tmp",
        )
        driver.kill()
        with pytest.raises(grpc.RpcError) as failed:
            call.result(timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert assert_cache_verified(node_dirs) == set()
    assert mounts_at(pod.target) == []

    proxy.clear()
    start_process(extra_args=["--insecure-registry", proxy.host])
    assert tmp_files(node_dirs) == []
    with connect(node_dirs) as kubelet:
        _after_restart(kubelet, node_dirs, pod, attributes, pushed.module_sha256)


SOAK_ITERATIONS = 15
SOAK_PODS = 40


@pytest.mark.slow
def test_kill_at_random_moments_under_load(
    start_process: StartProcess,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    """Crash points chosen by timing: kill -9 at a random moment while 40 pods publish and
    unpublish (fresh and cached modules mixed), restart, let kubelet converge, check."""
    seed = int(os.environ.get("CSI_WASM_SOAK_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    print(f"soak seed {seed} (set CSI_WASM_SOAK_SEED to replay)")
    cached = _module(registry, unique_repo + "-cached")
    for iteration in range(SOAK_ITERATIONS):
        fresh = _module(registry, f"{unique_repo}-{iteration}", 1024 * 1024)
        driver: Process = start_process()
        with connect(node_dirs) as kubelet:
            pods = [kubelet.new_pod(name=f"soak-{iteration}-{i}") for i in range(SOAK_PODS)]
            chosen = {pod.volume_id: rng.choice([cached, fresh]) for pod in pods}
            calls: list[grpc.Future[Any]] = []
            for pod in pods:
                request = kubelet.publish_request(pod, {"url": chosen[pod.volume_id].reference})
                calls.append(kubelet.node.NodePublishVolume.future(request, timeout=60))
            for pod in pods[: SOAK_PODS // 2]:  # some pods go away again at once
                unpublish = csi_pb2.NodeUnpublishVolumeRequest(
                    volume_id=pod.volume_id, target_path=str(pod.target)
                )
                calls.append(kubelet.node.NodeUnpublishVolume.future(unpublish, timeout=60))
            time.sleep(rng.uniform(0.0, 0.15))  # the random moment: this is the crash point
            driver.kill()
            for call in calls:
                call.exception(timeout=60)  # answered or failed with the connection: either
        assert_cache_verified(node_dirs)

        start_process()
        assert tmp_files(node_dirs) == []
        with connect(node_dirs) as kubelet:
            for pod in pods:  # kubelet converges: every pod that should run gets its module
                kubelet.publish(pod, {"url": chosen[pod.volume_id].reference})
                assert_served(pod, chosen[pod.volume_id].module_sha256)
            for pod in pods:
                kubelet.unpublish(pod)
        assert_nothing_left(node_dirs, pods)
        assert_cache_verified(node_dirs)
