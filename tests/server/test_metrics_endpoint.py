"""The driver's Prometheus endpoint after real publishes."""

from __future__ import annotations

import dataclasses
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from support.deadhosts import closed_port
from support.driver import NodeDirs, in_process
from support.kubelet import rpc_error
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_calls_pulls_cache_and_volumes(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(10_000, "metrics")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    settings = dataclasses.replace(
        node_dirs.settings(insecure_registries=frozenset({registry.host})),
        metrics_address="127.0.0.1:0",
    )
    with in_process(node_dirs, settings) as (driver, kubelet):
        assert driver.metrics_server is not None
        port = driver.metrics_server.address[1]
        pods = [kubelet.new_pod() for _ in range(2)]
        for pod in pods:
            kubelet.publish(pod, {"url": pushed.reference, "imagePullPolicy": "IfNotPresent"})
        rpc_error(
            lambda: kubelet.publish(
                kubelet.new_pod(), {"url": f"{registry.host}/{unique_repo}:nope"}
            )
        )
        samples = _scrape(port)

    publish = "NodePublishVolume"
    assert samples[("csi_wasm_operations_total", (("code", "OK"), ("method", publish)))] == 2
    assert samples[("csi_wasm_operations_total", (("code", "NOT_FOUND"), ("method", publish)))] == 1
    assert samples[("csi_wasm_pulls_total", (("result", "success"),))] == 1
    assert samples[("csi_wasm_pulls_total", (("result", "not_found"),))] == 1
    assert samples[("csi_wasm_pull_bytes_total", ())] == len(module)
    assert samples[("csi_wasm_cache_lookups_total", (("result", "hit"),))] == 1
    assert samples[("csi_wasm_cache_lookups_total", (("result", "miss"),))] == 2
    assert samples[("csi_wasm_cache_modules", ())] == 1
    assert samples[("csi_wasm_cache_bytes", ())] == len(module)
    assert samples[("csi_wasm_published_volumes", ())] == 2
    assert samples[("csi_wasm_operation_duration_seconds_count", (("method", publish),))] == 3
    for name, labels in samples:
        assert name.startswith("csi_wasm_")
        assert not {"volume_id", "pod", "url", "digest"} & {key for key, _ in labels}


def test_mirror_up_shows_a_dead_mirror_as_down_after_the_first_publish(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    dead = closed_port()
    module = make_module(2048, "mirror-up")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    settings = dataclasses.replace(
        node_dirs.settings(
            insecure_registries=frozenset({registry.host, dead}),
            registry_mirrors=(f"{registry.host}={dead}",),
        ),
        metrics_address="127.0.0.1:0",
    )
    with in_process(node_dirs, settings) as (driver, kubelet):
        assert driver.metrics_server is not None
        port = driver.metrics_server.address[1]
        up = ("csi_wasm_mirror_up", (("mirror", dead),))
        assert _scrape(port)[up] == 1
        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": pushed.reference})  # the source serves it
        assert (pod.target / "plugin.wasm").read_bytes() == module
        assert _scrape(port)[up] == 0
