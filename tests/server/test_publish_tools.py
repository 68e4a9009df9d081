"""Modules packaged by independent tools publish like our own pushes."""

from __future__ import annotations

import pytest
from support.driver import StartDriver
from support.kubelet import Kubelet, dockerconfigjson
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.tools import ContainersTools, buildah_compat_image, oras_push_artifact, skopeo_copy
from support.wasm import make_module


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_buildah_compat_image(
    kubelet: Kubelet,
    registry: Registry,
    container_tools: ContainersTools,
    unique_repo: str,
    fmt: str,
) -> None:
    module = make_module(16 * 1024, f"buildah-{fmt}")
    pushed = buildah_compat_image(registry, unique_repo, "v1", module, fmt, tools=container_tools)  # type: ignore[arg-type]
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": f"oci://{pushed.reference}", "sha256": pushed.module_sha256})
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_oras_artifact(kubelet: Kubelet, registry: Registry, unique_repo: str) -> None:
    module = make_module(16 * 1024, "oras")
    pushed = oras_push_artifact(registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference})
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_skopeo_copied_artifact(
    kubelet: Kubelet, registry: Registry, container_tools: ContainersTools, unique_repo: str
) -> None:
    module = make_module(4096, "skopeo")
    source = push_wasm_artifact(registry, unique_repo, "src", module)
    copied = skopeo_copy(
        source, registry, registry, unique_repo + "-copy", "v1", tools=container_tools
    )
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": copied.reference})
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_oras_artifact_on_basic_auth_registry(
    start_driver: StartDriver, auth_registry: Registry, unique_repo: str
) -> None:
    kubelet = start_driver(insecure_registries=frozenset({auth_registry.host}))
    module = make_module(4096, "oras-auth")
    pushed = oras_push_artifact(auth_registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()
    kubelet.publish(
        pod,
        {"url": pushed.reference},
        secrets=dockerconfigjson(auth_registry.host, *auth_registry.credentials),
    )
    assert (pod.target / "plugin.wasm").read_bytes() == module
