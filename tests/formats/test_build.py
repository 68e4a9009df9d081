"""Tests of csi_wasm.formats.build: what push writes is what the pull side recognises."""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import pytest
from support.wasm import make_module

from csi_wasm.formats import mediatypes as mt
from csi_wasm.formats import parse_image_manifest, select_format
from csi_wasm.formats.build import BUILDERS, build_package, compat_image, wasm_artifact
from csi_wasm.formats.tarball import extract_plugin

MODULE = make_module(3000, "build")


@pytest.mark.parametrize(
    ("format_name", "recognised_as"), [("artifact", "wasm-artifact"), ("compat", "compat-image")]
)
def test_the_pull_side_finds_the_module(format_name: str, recognised_as: str) -> None:
    package = build_package(format_name, MODULE, 0)
    manifest = parse_image_manifest(package.manifest, package.media_type, "pushed")
    found, layer = select_format(manifest, "pushed")
    assert found.name == recognised_as
    (blob,) = [b for b in package.blobs if b.digest == layer.digest]
    assert layer.size == len(blob.data)
    if format_name == "artifact":
        assert blob.data == MODULE
    else:
        out = io.BytesIO()
        module_hex, _ = extract_plugin(io.BytesIO(blob.data), out, limit=1 << 20, where="layer")
        assert out.getvalue() == MODULE
        assert module_hex == hashlib.sha256(MODULE).hexdigest()


def test_the_artifact_config_follows_the_cncf_layout() -> None:
    package = wasm_artifact(MODULE, 1_700_000_000)
    assert package.config.media_type == mt.WASM_CONFIG_V0
    assert json.loads(package.config.data) == {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": ["sha256:" + hashlib.sha256(MODULE).hexdigest()],
    }
    (layer,) = json.loads(package.manifest)["layers"]
    assert layer["mediaType"] == mt.WASM_LAYER
    assert layer["annotations"] == {"org.opencontainers.image.title": "plugin.wasm"}


def test_the_compat_config_names_the_uncompressed_layer() -> None:
    package = compat_image(MODULE, 0)
    config = json.loads(package.config.data)
    (layer,) = package.layers
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(gzip.decompress(layer.data)).hexdigest()
    ]
    assert package.config.media_type == mt.OCI_IMAGE_CONFIG


@pytest.mark.parametrize("format_name", sorted(BUILDERS))
def test_packages_are_reproducible(format_name: str) -> None:
    first, again = (build_package(format_name, MODULE, 42) for _ in range(2))
    assert first.manifest == again.manifest
    assert build_package(format_name, MODULE, 43).manifest != first.manifest
