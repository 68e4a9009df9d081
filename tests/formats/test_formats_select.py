"""Tests of csi_wasm.formats.select_format: which package a manifest is, and its module layer."""

from __future__ import annotations

import pytest

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import FORMATS, Descriptor, ImageManifest, Unpack, select_format
from csi_wasm.formats import mediatypes as mt
from csi_wasm.formats.artifact import WASM_ARTIFACT
from csi_wasm.formats.compat import COMPAT_IMAGE

WHERE = "ghcr.io/acme/f:v1"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


def d(media_type: str, n: int = 0) -> Descriptor:
    return Descriptor(media_type, f"sha256:{n:064x}", 100 + n)


def image(config: str, *layers: Descriptor, media_type: str = mt.OCI_MANIFEST) -> ImageManifest:
    return ImageManifest(media_type=media_type, config=d(config, 99), layers=tuple(layers))


def refused(manifest: ImageManifest, *, names_where: bool = True) -> str:
    with pytest.raises(FailedPrecondition) as info:
        select_format(manifest, WHERE)
    message = info.value.message
    assert "\n" not in message
    if names_where:
        assert WHERE in message
    return message


def test_formats_order_and_unpack() -> None:
    assert FORMATS[0] is WASM_ARTIFACT
    assert FORMATS.index(COMPAT_IMAGE) == len(FORMATS) - 2  # only the catch-all after it
    assert WASM_ARTIFACT.unpack is Unpack.RAW
    assert COMPAT_IMAGE.unpack is Unpack.TARBALL
    assert FORMATS[-1].unpack is Unpack.SNIFF


def test_wasm_artifact() -> None:
    layer = d(mt.WASM_LAYER, 1)
    fmt, picked = select_format(image(mt.WASM_CONFIG_V0, layer), WHERE)
    assert fmt is WASM_ARTIFACT
    assert picked == layer


def test_wasm_artifact_picks_the_wasm_layer_among_others() -> None:
    wasm = d(mt.WASM_LAYER, 2)
    manifest = image(
        mt.WASM_CONFIG_V0, d("application/vnd.acme.readme+md", 1), wasm, d(mt.OCI_LAYER_TAR, 3)
    )
    fmt, picked = select_format(manifest, WHERE)
    assert fmt is WASM_ARTIFACT
    assert picked == wasm


@pytest.mark.parametrize(
    "layers",
    [
        (),
        (d(mt.OCI_LAYER_TAR_GZIP, 1),),
        (d("application/vnd.wasm.content.layer.v1+wasm", 1),),
    ],
)
def test_wasm_artifact_without_wasm_layer_is_refused(layers: tuple[Descriptor, ...]) -> None:
    message = refused(image(mt.WASM_CONFIG_V0, *layers), names_where=False)
    assert "0 layers of type application/wasm" in message
    assert "exactly one" in message


def test_wasm_artifact_with_two_wasm_layers_is_refused() -> None:
    manifest = image(mt.WASM_CONFIG_V0, d(mt.WASM_LAYER, 1), d(mt.WASM_LAYER, 2))
    message = refused(manifest, names_where=False)
    assert "2 layers of type application/wasm" in message


@pytest.mark.parametrize("count", [0, 2])
def test_wasm_artifact_layer_count_message_names_the_module(count: int) -> None:
    layers = [d(mt.WASM_LAYER, n) for n in range(count)]
    refused(image(mt.WASM_CONFIG_V0, *layers))


@pytest.mark.parametrize(
    ("manifest_type", "config", "layer"),
    [
        (mt.DOCKER_MANIFEST, DOCKER_CONFIG, mt.DOCKER_LAYER_TAR_GZIP),
        (mt.OCI_MANIFEST, OCI_CONFIG, mt.OCI_LAYER_TAR_GZIP),
        (mt.OCI_MANIFEST, OCI_CONFIG, mt.OCI_LAYER_TAR),
    ],
)
def test_compat_image(manifest_type: str, config: str, layer: str) -> None:
    last = d(layer, 2)
    manifest = image(config, d(layer, 1), last, media_type=manifest_type)
    fmt, picked = select_format(manifest, WHERE)
    assert fmt is COMPAT_IMAGE
    assert picked == last


def test_compat_image_single_layer() -> None:
    only = d(mt.DOCKER_LAYER_TAR_GZIP, 1)
    fmt, picked = select_format(image(DOCKER_CONFIG, only), WHERE)
    assert (fmt, picked) == (COMPAT_IMAGE, only)


def test_compat_uses_last_layer_even_if_earlier_ones_differ() -> None:
    last = d(mt.OCI_LAYER_TAR_GZIP, 2)
    fmt, picked = select_format(image(OCI_CONFIG, d(ZSTD_LAYER, 1), last), WHERE)
    assert (fmt, picked) == (COMPAT_IMAGE, last)


@pytest.mark.parametrize(
    ("config", "layers", "found"),
    [
        (
            OCI_CONFIG,
            (d(mt.OCI_LAYER_TAR_GZIP, 1), d(ZSTD_LAYER, 2)),
            f"config {OCI_CONFIG}, layers [{mt.OCI_LAYER_TAR_GZIP}, {ZSTD_LAYER}]",
        ),
        (DOCKER_CONFIG, (), f"config {DOCKER_CONFIG}, layers [none]"),
        (
            "application/vnd.acme.config+json",
            (d("application/octet-stream", 1), d("application/octet-stream", 2)),
            "config application/vnd.acme.config+json, layers [application/octet-stream, "
            "application/octet-stream]",
        ),
    ],
)
def test_anything_else_is_refused_listing_found_and_accepted(
    config: str, layers: tuple[Descriptor, ...], found: str
) -> None:
    message = refused(image(config, *layers))
    assert "is not a Wasm module package" in message
    assert f"found {found}" in message
    assert "accepted: " + "; ".join(f.accepted for f in FORMATS) in message
    assert mt.WASM_CONFIG_V0 in message
    assert "plugin.wasm" in message
