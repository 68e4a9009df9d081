"""--prefetch end to end: listed modules are on the node before a pod asks, and stay."""

from __future__ import annotations

import dataclasses

from support.driver import NodeDirs, in_process, wait_for
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.settings import CacheSettings


def test_three_prefetched_modules_publish_without_a_download_and_survive_gc(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    pushed = [
        push_wasm_artifact(registry, unique_repo, f"v{i}", make_module(4096, f"prefetch-{i}"))
        for i in range(3)
    ]
    settings = dataclasses.replace(
        node_dirs.settings(insecure_registries=frozenset({registry.host})),
        prefetch=tuple(f"oci://{p.reference}" for p in pushed),
        cache=CacheSettings(max_bytes=1),  # anything unused and unlisted would be evicted
    )
    with in_process(node_dirs, settings) as (driver, kubelet):
        modules = node_dirs.root / "modules"
        wait_for(
            lambda: all((modules / p.module_sha256 / "plugin.wasm").exists() for p in pushed),
            timeout=30,
            what="the three prefetched modules",
        )
        driver.collector.collect()
        assert all((modules / p.module_sha256).exists() for p in pushed)
        before = registry.mark()
        for each in pushed:
            pod = kubelet.new_pod()
            kubelet.publish(pod, {"url": each.reference})
        gets = registry.requests_matching("GET", rf"/v2/{unique_repo}/blobs/.*", since=before)
        assert gets == 0
