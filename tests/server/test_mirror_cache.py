"""Nodes behind a real pull-through cache (distribution's proxy mode) in front of the origin.

The fleet rehearsal (benchmarks/bench_fleet.py) runs this at 20 to 100 nodes; here two
in-process drivers check the recipe the README gives: one blob GET reaches the origin
after the mirror has it, and a tag moved on the origin is seen through the mirror.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from support.driver import NodeDirs, in_process, wait_for
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.registry import Registry, running_registry
from support.wasm import make_module


@pytest.fixture
def mirror(tmp_path: Path, registry: Registry) -> Iterator[Registry]:
    with running_registry(tmp_path / "mirror", proxy_of=registry.url) as cache:
        yield cache


@pytest.fixture
def nodes(tmp_path: Path, registry: Registry, mirror: Registry) -> Iterator[list[Kubelet]]:
    hosts = frozenset({registry.host, mirror.host})
    with ExitStack() as stack:
        kubelets = []
        for index in range(2):
            dirs = NodeDirs(tmp_path / f"node-{index}")
            stack.callback(dirs.cleanup_mounts)
            settings = dirs.settings(
                insecure_registries=hosts, registry_mirrors=(f"{registry.host}={mirror.host}",)
            )
            _driver, kubelet = stack.enter_context(in_process(dirs, settings))
            kubelets.append(kubelet)
        yield kubelets


def test_a_second_node_behind_a_pull_through_cache_costs_the_origin_no_blob_get(
    nodes: list[Kubelet], registry: Registry, mirror: Registry, unique_repo: str
) -> None:
    module = make_module(64 * 1024, "through-the-cache")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    before_origin, before_mirror = registry.mark(), mirror.mark()

    def origin_gets() -> int:
        return registry.blob_gets(pushed.layer_digest, since=before_origin)

    first, second = nodes
    pod = first.new_pod()
    first.publish(pod, {"url": pushed.reference})
    assert (pod.target / "plugin.wasm").read_bytes() == module
    # Distribution 2.8 fetches a missing blob twice (one copy to store, one to serve,
    # the first maybe still running): the first node costs the origin 2 GETs.
    wait_for(lambda: origin_gets() == 2, what="the mirror to store the blob")
    pod = second.new_pod()
    second.publish(pod, {"url": pushed.reference})
    assert (pod.target / "plugin.wasm").read_bytes() == module
    assert origin_gets() == 2  # the second node costs the origin nothing
    assert mirror.blob_gets(pushed.layer_digest, status=200, since=before_mirror) == 2


def test_a_tag_moved_on_the_origin_is_seen_through_the_mirror(
    nodes: list[Kubelet], registry: Registry, unique_repo: str
) -> None:
    first = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "first"))
    for kubelet in nodes:
        kubelet.publish(kubelet.new_pod(), {"url": first.reference})
    moved = make_module(4096, "moved")
    push_wasm_artifact(registry, unique_repo, "stable", moved)
    for kubelet in nodes:
        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": first.reference, "imagePullPolicy": "Always"})
        assert (pod.target / "plugin.wasm").read_bytes() == moved
