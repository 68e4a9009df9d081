"""Every packaging format published end to end from the real registry."""

from __future__ import annotations

import json

import grpc
import pytest
from support.kubelet import Kubelet, rpc_error
from support.oci import (
    Descriptor,
    encode_manifest,
    get_manifest,
    gzip_bytes,
    make_layer_tar,
    push_compat_image,
    push_custom_artifact,
    push_index,
    push_wasm_artifact,
)
from support.registry import Registry
from support.tools import oras_push_artifact
from support.wasm import make_module

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _published(kubelet: Kubelet, url: str) -> bytes:
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": url})
    return (pod.target / "plugin.wasm").read_bytes()


def test_solo_oci_variant(kubelet: Kubelet, registry: Registry, unique_repo: str) -> None:
    module = make_module(4096, "solo")
    config = encode_manifest(
        {"type": "envoy_proxy", "abiVersions": ["v0-4689a30309abf31aee9ae36e73d34b1bb182685f"]}
    )
    url = push_custom_artifact(
        registry,
        unique_repo,
        "v1",
        "application/vnd.module.wasm.config.v1+json",
        [
            (config, "application/vnd.module.wasm.config.v1+json"),
            (module, "application/vnd.module.wasm.content.layer.v1+wasm"),
        ],
    )
    assert _published(kubelet, url) == module


def test_older_wasme(kubelet: Kubelet, registry: Registry, unique_repo: str) -> None:
    module = make_module(4096, "wasme")
    url = push_custom_artifact(
        registry,
        unique_repo,
        "v1",
        "application/vnd.io.solo.wasm.config.v1+json",
        [(module, "application/vnd.io.solo.wasm.code.v1+wasm")],
    )
    assert _published(kubelet, url) == module


def test_wasm_to_oci_pushed_by_oras(kubelet: Kubelet, registry: Registry, unique_repo: str) -> None:
    module = make_module(4096, "wasm-to-oci")
    pushed = oras_push_artifact(
        registry,
        unique_repo,
        "v1",
        module,
        layer_type="application/vnd.wasm.content.layer.v1+wasm",
        config_type="application/vnd.wasm.config.v1+json",
    )
    assert _published(kubelet, pushed.reference) == module


def test_plain_oras_push_of_a_wasm_file(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4096, "oras-default")
    pushed = oras_push_artifact(
        registry, unique_repo, "v1", module, layer_type=None, config_type=None
    )
    manifest = json.loads(pushed.manifest)
    assert manifest["layers"][0]["mediaType"] != "application/wasm"  # oras's own default
    assert _published(kubelet, pushed.reference) == module


def test_single_layer_tarball_artifact(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4096, "single-tar")
    url = push_custom_artifact(
        registry,
        unique_repo,
        "v1",
        "application/vnd.oci.empty.v1+json",
        [
            (
                gzip_bytes(make_layer_tar({"plugin.wasm": module})),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        ],
    )
    assert _published(kubelet, url) == module


def _platform_entry(pushed_digest: str, size: int, os: str, arch: str) -> Descriptor:
    return Descriptor(OCI_MANIFEST, pushed_digest, size, platform={"os": os, "architecture": arch})


def test_index_picks_the_wasm_platform(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    wasm = push_wasm_artifact(registry, unique_repo, "wasm", make_module(2048, "idx-wasm"))
    other = push_compat_image(registry, unique_repo, "linux", make_module(2048, "idx-linux"), "oci")
    push_index(
        registry,
        unique_repo,
        "v1",
        [
            _platform_entry(other.manifest_digest, other.manifest_size, "linux", "amd64"),
            _platform_entry(wasm.manifest_digest, wasm.manifest_size, "wasip1", "wasm"),
        ],
    )
    module = _published(kubelet, f"{registry.host}/{unique_repo}:v1")
    assert module == make_module(2048, "idx-wasm")


def test_index_with_one_entry(kubelet: Kubelet, registry: Registry, unique_repo: str) -> None:
    only = push_wasm_artifact(registry, unique_repo, "only", make_module(2048, "idx-only"))
    push_index(registry, unique_repo, "v1", [only.manifest_descriptor()])
    assert _published(kubelet, f"{registry.host}/{unique_repo}:v1") == make_module(2048, "idx-only")


def test_ambiguous_index_lists_the_platforms(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    a = push_compat_image(registry, unique_repo, "a", make_module(1024, "amd"), "oci")
    b = push_compat_image(registry, unique_repo, "b", make_module(1024, "arm"), "oci")
    push_index(
        registry,
        unique_repo,
        "v1",
        [
            _platform_entry(a.manifest_digest, a.manifest_size, "linux", "amd64"),
            _platform_entry(b.manifest_digest, b.manifest_size, "linux", "arm64"),
        ],
    )
    code, message = rpc_error(lambda: _published(kubelet, f"{registry.host}/{unique_repo}:v1"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "linux/amd64" in message and "linux/arm64" in message


def test_index_nested_too_deep_is_refused(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    leaf = push_wasm_artifact(registry, unique_repo, "leaf", make_module(1024, "deep"))
    index = "application/vnd.oci.image.index.v1+json"
    digest = push_index(registry, unique_repo, "i1", [leaf.manifest_descriptor()])
    for level in range(2, 5):
        body = registry_manifest_size(registry, unique_repo, digest)
        digest = push_index(registry, unique_repo, f"i{level}", [Descriptor(index, digest, body)])
    code, message = rpc_error(lambda: _published(kubelet, f"{registry.host}/{unique_repo}:i4"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message


def registry_manifest_size(registry: Registry, repo: str, digest: str) -> int:
    return len(get_manifest(registry, repo, digest).content)


@pytest.mark.parametrize("flavor", ["docker", "oci"])
def test_compat_image_with_other_files(
    kubelet: Kubelet, registry: Registry, unique_repo: str, flavor: str
) -> None:
    module = make_module(2048, f"extra-{flavor}")
    pushed = push_compat_image(
        registry,
        unique_repo,
        "v1",
        module,
        flavor,  # type: ignore[arg-type]
        path_in_layer="./plugin.wasm",
        extra_files={"README.md": b"hello", "etc/other.wasm": b"x"},
    )
    assert _published(kubelet, pushed.reference) == module
