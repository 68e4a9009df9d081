"""Publishes waiting on a pull hold no thread: the driver keeps answering everything else."""

from __future__ import annotations

from typing import Any

import grpc
from support.driver import NodeDirs, connect, in_process, wait_for
from support.gate import gated_proxy
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2
from csi_wasm.server.serve import start

WAITING = 200


def test_probe_and_a_cached_publish_answer_while_200_publishes_wait_on_one_pull(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4096, "cached")
    cached = push_wasm_artifact(registry, unique_repo, "cached", module)
    slow = push_wasm_artifact(registry, unique_repo, "slow", make_module(8192, "slow"))
    with gated_proxy(registry.url) as proxy:
        settings = node_dirs.settings(insecure_registries=frozenset({registry.host, proxy.host}))
        with in_process(node_dirs, settings) as (driver, kubelet):
            kubelet.publish(kubelet.new_pod(name="first"), {"url": cached.reference})
            mark = registry.mark()
            url = f"{proxy.host}/{unique_repo}:slow"
            calls: list[grpc.Future[Any]] = []
            for i in range(WAITING):
                request = kubelet.publish_request(kubelet.new_pod(name=f"w{i}"), {"url": url})
                calls.append(kubelet.node.NodePublishVolume.future(request, timeout=120))
            wait_for(lambda: driver.puller.waiting() == WAITING, what="200 waiting publishes")
            assert proxy.blob_requests == 1  # the pull is stuck on its blob

            # Each answers within a 1 s deadline, or the call fails DEADLINE_EXCEEDED.
            probe = kubelet.identity.Probe(csi_pb2.ProbeRequest(), timeout=1.0)
            assert probe.ready.value is True
            pod = kubelet.new_pod(name="cached")
            kubelet.publish(pod, {"url": cached.reference}, timeout=1.0)
            assert (pod.target / "plugin.wasm").read_bytes() == module
            assert not any(call.done() for call in calls)

            proxy.release.set()
            for call in calls:
                call.result(timeout=120)
            assert proxy.blob_requests == 1
            assert registry.blob_gets(slow.layer_digest, since=mark) == 1
            assert driver.puller.waiting() == 0


def test_the_driver_stops_while_publishes_wait(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    push_wasm_artifact(registry, unique_repo, "v1", make_module(2048, "stop"))
    with gated_proxy(registry.url) as proxy:
        settings = node_dirs.settings(insecure_registries=frozenset({proxy.host}))
        driver = start(settings)
        with connect(node_dirs) as kubelet:
            url = f"{proxy.host}/{unique_repo}:v1"
            calls = [
                kubelet.node.NodePublishVolume.future(
                    kubelet.publish_request(kubelet.new_pod(), {"url": url}), timeout=60
                )
                for _ in range(3)
            ]
            wait_for(lambda: driver.puller.waiting() == 3, what="3 waiting publishes")
            driver.stop(grace=0)
            for call in calls:
                assert call.exception(timeout=10) is not None
        assert not node_dirs.socket.exists()
