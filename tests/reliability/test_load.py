"""Load: 500 concurrent publish/unpublish pairs, three rounds, against a driver process.

Each round puts 500 NodePublishVolume calls in flight at once (the first round's all
wait on one pull of an uncached module) and sends each pod's NodeUnpublishVolume as
soon as its publish answered, so publishes and unpublishes overlap. After every round:
zero errors, zero mounts, targets or records left, and the driver's open file
descriptors and threads back to their level.

"Their level" is the fresh process's, plus what is made on first use and kept by design:
the driver's worker pools (they grow a thread at a time while work queues, up to
``POOLS`` threads) and the registry keep-alive connection. So: open fds after every
round equal those after round 1, which are at most ``KEPT_FDS`` above the fresh process;
threads never exceed the fresh count plus the pools, and never grow after round 2.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping
from typing import Any

import grpc
from support.driver import NodeDirs, connect, wait_for
from support.kubelet import Kubelet, PodVolume
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2
from csi_wasm.server.serve import LOCAL_WORKERS, NETWORK_WORKERS, READINESS_WORKERS

from .conftest import StartProcess
from .harness import Process, assert_cache_verified, assert_nothing_left, tmp_files

PAIRS = 500
ROUNDS = 3
POOLS = LOCAL_WORKERS + NETWORK_WORKERS + READINESS_WORKERS
KEPT_FDS = 4  # registry keep-alive connection(s) and the like


def run_pairs(kubelet: Kubelet, pods: list[PodVolume], attributes: Mapping[str, str]) -> list[str]:
    """All publishes in flight at once, each unpublish sent when its publish answers."""
    errors: list[str] = []
    unpublished: list[grpc.Future[Any]] = []
    lock = threading.Lock()
    done = threading.Condition(lock)

    def failed(what: str, future: grpc.Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            code = error.code() if isinstance(error, grpc.Call) else "?"
            with lock:
                errors.append(f"{what}: {code} {error}")

    def after_publish(pod: PodVolume, future: grpc.Future[Any]) -> None:
        failed("publish", future)
        request = csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=pod.volume_id, target_path=str(pod.target)
        )
        unpublish = kubelet.node.NodeUnpublishVolume.future(request, timeout=120)
        unpublish.add_done_callback(lambda f: failed("unpublish", f))
        with done:
            unpublished.append(unpublish)
            done.notify_all()

    publishes: list[grpc.Future[Any]] = []
    for pod in pods:
        call: grpc.Future[Any] = kubelet.node.NodePublishVolume.future(
            kubelet.publish_request(pod, attributes), timeout=120
        )
        call.add_done_callback(functools.partial(after_publish, pod))
        publishes.append(call)
    deadline = time.monotonic() + 180
    with done:
        while len(unpublished) < len(pods):
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(unpublished)} of {len(pods)} publishes answered"
            done.wait(min(left, 1.0))
    for future in [*publishes, *unpublished]:
        future.exception(timeout=max(1.0, deadline - time.monotonic()))
    return errors


def _level(driver: Process) -> tuple[int, int]:
    return driver.open_fds(), driver.threads()


def _settles(driver: Process, fds: int, threads: int) -> tuple[int, int]:
    """Pull threads and connections end asynchronously: wait, bounded, for the level."""
    try:
        wait_for(
            lambda: driver.open_fds() == fds and driver.threads() <= threads,
            timeout=30,  # a loaded CI machine ends threads late; the wait stops when done
            what="fds and threads",
        )
    except AssertionError:
        raise AssertionError(
            f"(fds, threads) {_level(driver)}, wanted {fds}, <= {threads}"
        ) from None
    return _level(driver)


def test_500_concurrent_pairs_three_rounds(
    start_process: StartProcess, node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(256 * 1024, "load"))
    attributes = {"url": pushed.reference}
    driver = start_process()
    with connect(node_dirs) as kubelet:
        fresh = _level(driver)
        mark = registry.mark()
        levels = [fresh]
        for round_ in range(ROUNDS):
            pods = [kubelet.new_pod(name=f"r{round_}-{i}") for i in range(PAIRS)]
            errors = run_pairs(kubelet, pods, attributes)
            assert errors == [], f"{len(errors)} errors, e.g. {errors[:3]}"
            assert_nothing_left(node_dirs, pods)
            if round_ == 0:
                assert registry.blob_gets(pushed.layer_digest, since=mark) == 1
                wait_for(lambda: driver.threads() <= fresh[1] + POOLS, timeout=30)
                levels.append(_level(driver))
                assert levels[1][0] <= fresh[0] + KEPT_FDS, levels
            else:
                ceiling = levels[-1][1] if round_ == 2 else fresh[1] + POOLS
                levels.append(_settles(driver, levels[1][0], ceiling))
        print(f"(open fds, threads): fresh, then after each round: {levels}")
        assert assert_cache_verified(node_dirs) == {pushed.module_sha256}
        assert tmp_files(node_dirs) == []
    assert driver.terminate() == 0
