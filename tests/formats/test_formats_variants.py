"""Tests of the packaging variants in csi_wasm.formats: which format, which layer, in what order.

The manifests are written as the real tools write them (field order, annotations,
presence of ``mediaType``), from their sources: wasme ``pkg/push/push.go`` (config
descriptor pushed as config and as a layer), early wasme's WebAssembly Hub pulls,
engineerd/wasm-to-oci ``pkg/oci/push.go`` (oras with a config media type, ``{}`` config),
oras 1.x (OCI 1.1 empty config, ``artifactType``), oras 0.x / oras-py (unknown config),
buildah (Docker and OCI compat images).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import pytest
from support.oci import gzip_bytes, make_layer_tar
from support.wasm import make_module

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import (
    FORMATS,
    SNIFF_BYTES,
    Descriptor,
    Format,
    ImageManifest,
    PackageError,
    Unpack,
    check_wasm_header,
    parse_image_manifest,
    select_format,
    sniff_unpack,
)
from csi_wasm.formats import mediatypes as mt
from csi_wasm.formats.artifact import WASM_ARTIFACT
from csi_wasm.formats.compat import COMPAT_IMAGE
from csi_wasm.formats.single import SINGLE_LAYER
from csi_wasm.formats.solo import SOLO_OCI
from csi_wasm.formats.tarball import extract_plugin
from csi_wasm.formats.wasme import WASME_LEGACY
from csi_wasm.formats.wasmtooci import WASM_TO_OCI

WHERE = "ghcr.io/acme/f:v1"
MODULE = make_module(2000, "variants")
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
TITLE = "org.opencontainers.image.title"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fake_digest(n: int) -> str:
    return f"sha256:{n:064x}"


def desc(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


def titled(media_type: str, digest: str, size: int, title: str) -> dict[str, Any]:
    return desc(media_type, digest, size, **{TITLE: title})


MODULE_LAYER = (digest_of(MODULE), len(MODULE))


def parse(doc: dict[str, Any], content_type: str = mt.OCI_MANIFEST) -> ImageManifest:
    return parse_image_manifest(json.dumps(doc).encode(), content_type, WHERE)


def select(doc: dict[str, Any], content_type: str = mt.OCI_MANIFEST) -> tuple[Format, Descriptor]:
    return select_format(parse(doc, content_type), WHERE)


def refused(manifest: ImageManifest) -> str:
    with pytest.raises(FailedPrecondition) as info:
        select_format(manifest, WHERE)
    message = info.value.message
    assert "\n" not in message
    assert WHERE in message
    assert info.value.code == "FAILED_PRECONDITION"
    return message


# -- realistic manifests, one per tool ------------------------------------------------

CNCF_ARTIFACT = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "artifactType": mt.WASM_CONFIG_V0,
    "config": desc(mt.WASM_CONFIG_V0, fake_digest(1), 412),
    "layers": [titled(mt.WASM_LAYER, *MODULE_LAYER, "plugin.wasm")],
}

# wasme push: oras.Push(files=[config, filter], WithConfig(config)), manifest annotations
# from the runtime config; old oras writes no "mediaType" in the body.
WASME_OCI_VARIANT = {
    "schemaVersion": 2,
    "config": titled(mt.MODULE_WASM_CONFIG_V1, fake_digest(2), 125, "runtime-config.json"),
    "layers": [
        titled(mt.MODULE_WASM_CONFIG_V1, fake_digest(2), 125, "runtime-config.json"),
        titled(mt.MODULE_WASM_CONTENT_V1, *MODULE_LAYER, "filter.wasm"),
    ],
    "annotations": {
        "module.wasm.runtime/abi_version": "v0-541b2c1155fffb15ccde92b8324f3e38f7339ba6",
        "module.wasm.runtime/type": "envoy_proxy",
    },
}

# The same two files pushed by hand with oras (as higress's build scripts do).
ORAS_SOLO_VARIANT = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "config": desc(mt.UNKNOWN_CONFIG, EMPTY_JSON_DIGEST, 2),
    "layers": [
        titled(mt.MODULE_WASM_CONFIG_V1, fake_digest(3), 98, "config.json"),
        titled(mt.MODULE_WASM_CONTENT_V1, *MODULE_LAYER, "plugin.wasm"),
    ],
}

# Early wasme (WebAssembly Hub 2019): config as manifest config only, one code layer.
WASME_LEGACY_IMAGE = {
    "schemaVersion": 2,
    "config": desc(mt.SOLO_WASM_CONFIG_V1, fake_digest(4), 39),
    "layers": [titled(mt.SOLO_WASM_CODE_V1, *MODULE_LAYER, "code.wasm")],
}

# wasm-to-oci push: oras WithConfigMediaType (a "{}" config), layer titled with the path.
WASM_TO_OCI_ARTIFACT = {
    "schemaVersion": 2,
    "config": desc(mt.WASM_TO_OCI_CONFIG_V1, EMPTY_JSON_DIGEST, 2),
    "layers": [titled(mt.WASM_TO_OCI_CONTENT_V1, *MODULE_LAYER, "testdata/hello.wasm")],
}

# oras 1.x `oras push ref plugin.wasm`: OCI 1.1 image manifest with the empty config.
ORAS_1_PUSH = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "artifactType": "application/vnd.unknown.artifact.v1",
    "config": {**desc(mt.OCI_EMPTY, EMPTY_JSON_DIGEST, 2), "data": "e30="},
    "layers": [titled(mt.OCI_LAYER_TAR, *MODULE_LAYER, "plugin.wasm")],
    "annotations": {"org.opencontainers.image.created": "2024-05-01T10:00:00Z"},
}

# oras 0.x / oras-py: the "unknown" config.
ORAS_0_PUSH = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "config": desc(mt.UNKNOWN_CONFIG, EMPTY_JSON_DIGEST, 2),
    "layers": [titled(mt.OCI_LAYER_TAR, *MODULE_LAYER, "plugin.wasm")],
    "annotations": {},
}

# `oras push ref plugin.wasm:application/wasm` without the CNCF config.
ORAS_TYPED_PUSH = {
    **ORAS_1_PUSH,
    "layers": [titled(mt.WASM_LAYER, *MODULE_LAYER, "plugin.wasm")],
}

BUILDAH_DOCKER = {
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST,
    "config": desc(mt.DOCKER_IMAGE_CONFIG, fake_digest(5), 1203),
    "layers": [desc(mt.DOCKER_LAYER_TAR_GZIP, fake_digest(6), 1600)],
}

BUILDAH_OCI = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "config": desc(mt.OCI_IMAGE_CONFIG, fake_digest(7), 700),
    "layers": [desc(mt.OCI_LAYER_TAR_GZIP, fake_digest(8), 1600)],
    "annotations": {
        "org.opencontainers.image.base.digest": "",
        "org.opencontainers.image.base.name": "",
    },
}


@pytest.mark.parametrize(
    ("doc", "content_type", "expected", "layer_index"),
    [
        (CNCF_ARTIFACT, mt.OCI_MANIFEST, WASM_ARTIFACT, 0),
        (WASME_OCI_VARIANT, mt.OCI_MANIFEST, SOLO_OCI, 1),
        (ORAS_SOLO_VARIANT, mt.OCI_MANIFEST, SOLO_OCI, 1),
        (WASME_LEGACY_IMAGE, mt.OCI_MANIFEST, WASME_LEGACY, 0),
        (WASM_TO_OCI_ARTIFACT, mt.OCI_MANIFEST, WASM_TO_OCI, 0),
        (ORAS_1_PUSH, mt.OCI_MANIFEST, SINGLE_LAYER, 0),
        (ORAS_0_PUSH, mt.OCI_MANIFEST, SINGLE_LAYER, 0),
        (ORAS_TYPED_PUSH, mt.OCI_MANIFEST, SINGLE_LAYER, 0),
        (BUILDAH_DOCKER, mt.DOCKER_MANIFEST, COMPAT_IMAGE, 0),
        (BUILDAH_OCI, mt.OCI_MANIFEST, COMPAT_IMAGE, 0),
    ],
    ids=[
        "cncf",
        "wasme-oci",
        "oras-solo",
        "wasme-legacy",
        "wasm-to-oci",
        "oras-1",
        "oras-0",
        "oras-typed",
        "buildah-docker",
        "buildah-oci",
    ],
)
def test_each_tool_gets_its_format_and_layer(
    doc: dict[str, Any], content_type: str, expected: Format, layer_index: int
) -> None:
    fmt, layer = select(doc, content_type)
    assert fmt is expected
    wanted = doc["layers"][layer_index]
    assert layer == Descriptor(wanted["mediaType"], wanted["digest"], wanted["size"])


def test_raw_formats_pick_the_module_itself() -> None:
    """For RAW formats the layer digest is the module's: the puller checks sha256 early."""
    for doc in (CNCF_ARTIFACT, WASME_OCI_VARIANT, WASME_LEGACY_IMAGE, WASM_TO_OCI_ARTIFACT):
        fmt, layer = select(doc)
        assert fmt.unpack is Unpack.RAW
        assert (layer.digest, layer.size) == MODULE_LAYER


# -- FORMATS and precedence -------------------------------------------------------------


def test_formats_order_and_unpack() -> None:
    assert FORMATS == (
        WASM_ARTIFACT,
        SOLO_OCI,
        WASME_LEGACY,
        WASM_TO_OCI,
        COMPAT_IMAGE,
        SINGLE_LAYER,
    )
    assert [f.unpack for f in FORMATS] == [Unpack.RAW] * 4 + [Unpack.TARBALL, Unpack.SNIFF]
    assert len({f.name for f in FORMATS}) == len(FORMATS)
    for fmt in FORMATS:
        assert "\n" not in fmt.accepted
        assert len(fmt.accepted) <= 100


def d(media_type: str, n: int = 0) -> Descriptor:
    return Descriptor(media_type, fake_digest(n), 100 + n)


def image(config: str, *layers: Descriptor) -> ImageManifest:
    return ImageManifest(media_type=mt.OCI_MANIFEST, config=d(config, 99), layers=tuple(layers))


def test_cncf_config_claims_the_manifest_even_with_another_wasm_layer() -> None:
    manifest = image(mt.WASM_CONFIG_V0, d(mt.WASM_TO_OCI_CONTENT_V1, 1))
    message = refused(manifest)
    assert "Wasm artifact has 0 layers of type application/wasm" in message


def test_explicit_wasm_layer_beats_a_trailing_tarball() -> None:
    solo = d(mt.MODULE_WASM_CONTENT_V1, 1)
    manifest = image(mt.OCI_IMAGE_CONFIG, solo, d(mt.OCI_LAYER_TAR_GZIP, 2))
    assert select_format(manifest, WHERE) == (SOLO_OCI, solo)


@pytest.mark.parametrize(
    ("layer_type", "expected"),
    [
        (mt.MODULE_WASM_CONTENT_V1, SOLO_OCI),
        (mt.SOLO_WASM_CODE_V1, WASME_LEGACY),
        (mt.WASM_TO_OCI_CONTENT_V1, WASM_TO_OCI),
    ],
)
@pytest.mark.parametrize("config", [mt.OCI_EMPTY, mt.UNKNOWN_CONFIG, mt.OCI_IMAGE_CONFIG])
def test_vendor_layer_wins_over_single_layer_whatever_the_config(
    layer_type: str, expected: Format, config: str
) -> None:
    """A known Wasm layer type stays RAW (sha256 checked before download), not SNIFF."""
    only = d(layer_type, 1)
    assert select_format(image(config, only), WHERE) == (expected, only)


def test_vendor_formats_ignore_other_layers() -> None:
    content = d(mt.WASM_TO_OCI_CONTENT_V1, 2)
    manifest = image(mt.WASM_TO_OCI_CONFIG_V1, d("text/markdown", 1), content, d("text/x", 3))
    assert select_format(manifest, WHERE) == (WASM_TO_OCI, content)


@pytest.mark.parametrize(
    ("layer_type", "package"),
    [
        (mt.MODULE_WASM_CONTENT_V1, "Solo Wasm image (oci variant)"),
        (mt.SOLO_WASM_CODE_V1, "wasme image"),
        (mt.WASM_TO_OCI_CONTENT_V1, "wasm-to-oci artifact"),
    ],
)
def test_two_module_layers_are_ambiguous(layer_type: str, package: str) -> None:
    message = refused(image(mt.UNKNOWN_CONFIG, d(layer_type, 1), d(layer_type, 2)))
    assert message.startswith(f"{WHERE}: {package} has 2 layers of type {layer_type}")
    assert "exactly one is required" in message


def test_package_error_is_a_failed_precondition() -> None:
    """Even if a pick rule is called directly, its error maps to FAILED_PRECONDITION."""
    with pytest.raises(PackageError) as info:
        SOLO_OCI.pick(image(mt.UNKNOWN_CONFIG, *(d(mt.MODULE_WASM_CONTENT_V1, n) for n in (1, 2))))
    assert isinstance(info.value, FailedPrecondition)
    assert info.value.code == "FAILED_PRECONDITION"


@pytest.mark.parametrize("layer_type", [mt.OCI_LAYER_TAR, mt.OCI_LAYER_TAR_GZIP])
def test_single_tar_layer_of_an_image_is_compat(layer_type: str) -> None:
    only = d(layer_type, 1)
    assert select_format(image(mt.OCI_IMAGE_CONFIG, only), WHERE) == (COMPAT_IMAGE, only)


@pytest.mark.parametrize("config", [mt.OCI_EMPTY, mt.UNKNOWN_CONFIG, "application/vnd.acme+json"])
@pytest.mark.parametrize(
    "layer_type", [mt.OCI_LAYER_TAR, mt.OCI_LAYER_TAR_GZIP, "application/octet-stream"]
)
def test_single_layer_of_an_artifact_is_sniffed(config: str, layer_type: str) -> None:
    only = d(layer_type, 1)
    assert select_format(image(config, only), WHERE) == (SINGLE_LAYER, only)


def test_single_layer_format_does_not_take_images_or_several_layers() -> None:
    assert SINGLE_LAYER.pick(image(mt.DOCKER_IMAGE_CONFIG, d("application/x", 1))) is None
    assert SINGLE_LAYER.pick(image(mt.OCI_EMPTY, d(mt.OCI_LAYER_TAR, 1), d("x", 2))) is None
    assert SINGLE_LAYER.pick(image(mt.OCI_EMPTY)) is None


def test_compat_needs_an_image_config_for_several_layers() -> None:
    """Two oras-pushed files are not a container image."""
    layers = (d(mt.OCI_LAYER_TAR, 1), d(mt.OCI_LAYER_TAR, 2))
    assert COMPAT_IMAGE.pick(image(mt.UNKNOWN_CONFIG, *layers)) is None
    message = refused(image(mt.UNKNOWN_CONFIG, *layers))
    assert "is not a Wasm module package" in message


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "found"),
    [
        (
            image(mt.OCI_IMAGE_CONFIG, d(mt.OCI_LAYER_TAR_GZIP, 1), d("x/zstd", 2)),
            f"config {mt.OCI_IMAGE_CONFIG}, layers [{mt.OCI_LAYER_TAR_GZIP}, x/zstd]",
        ),
        (image(mt.DOCKER_IMAGE_CONFIG), f"config {mt.DOCKER_IMAGE_CONFIG}, layers [none]"),
        (image(mt.OCI_EMPTY), f"config {mt.OCI_EMPTY}, layers [none]"),
        (
            image(mt.UNKNOWN_CONFIG, d("text/plain", 1), d("text/plain", 2)),
            f"config {mt.UNKNOWN_CONFIG}, layers [text/plain, text/plain]",
        ),
        (
            image(mt.DOCKER_IMAGE_CONFIG, d("application/vnd.acme.bin", 1)),
            f"config {mt.DOCKER_IMAGE_CONFIG}, layers [application/vnd.acme.bin]",
        ),
    ],
)
def test_refusal_names_what_was_found_and_every_accepted_format(
    manifest: ImageManifest, found: str
) -> None:
    message = refused(manifest)
    assert f"{WHERE} is not a Wasm module package: found {found}; accepted: " in message
    assert "; ".join(fmt.accepted for fmt in FORMATS) in message
    for media_type in (
        mt.WASM_CONFIG_V0,
        mt.MODULE_WASM_CONTENT_V1,
        mt.SOLO_WASM_CODE_V1,
        mt.WASM_TO_OCI_CONTENT_V1,
        "plugin.wasm",
        "oras push",
    ):
        assert media_type in message


def test_refusal_of_a_hostile_manifest_is_bounded() -> None:
    long_type = "application/" + "x" * 5000
    layers = [d(long_type, n) for n in range(1000)]
    message = refused(image(long_type, *layers))
    assert len(message) < 1600
    assert "and 994 more" in message
    assert "x" * 200 not in message


def test_describe_is_bounded_but_exact_for_short_manifests() -> None:
    short = image(mt.OCI_EMPTY, d("a/b", 1), d("c/d", 2))
    assert short.describe() == f"config {mt.OCI_EMPTY}, layers [a/b, c/d]"
    many = image(mt.OCI_EMPTY, *(d(f"t/{n}", n) for n in range(8)))
    assert many.describe().endswith("layers [t/0, t/1, t/2, t/3, t/4, t/5, and 2 more]")


# -- SNIFF: what the bytes of a single layer say -----------------------------------------

ORAS_LAYER = Descriptor(mt.OCI_LAYER_TAR, digest_of(MODULE), len(MODULE))


def sniff(head: bytes, layer: Descriptor = ORAS_LAYER) -> Unpack:
    return sniff_unpack(head[:SNIFF_BYTES], layer, WHERE)


def sniff_refused(head: bytes, layer: Descriptor = ORAS_LAYER) -> str:
    with pytest.raises(FailedPrecondition) as info:
        sniff(head, layer)
    message = info.value.message
    assert "\n" not in message
    assert WHERE in message
    assert "accepted" in message
    assert len(message) < 400
    return message


def v7_tar(name: str, data: bytes) -> bytes:
    """A pre-POSIX tar member: no "ustar" magic, only the header checksum."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    header[257:265] = b"\0" * 8  # magic and version
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * ((-len(data)) % 512) + b"\0" * 1024


def test_sniff_bytes_is_one_tar_block() -> None:
    assert SNIFF_BYTES == tarfile.BLOCKSIZE


def test_wasm_module_is_raw() -> None:
    assert sniff(MODULE) is Unpack.RAW
    check_wasm_header(MODULE[:8], WHERE)  # what the puller does next


def test_component_is_raw_and_then_refused_by_the_header_check() -> None:
    component = b"\0asm\x0d\0\x01\0" + b"\0" * 100
    assert sniff(component) is Unpack.RAW
    with pytest.raises(FailedPrecondition, match="components are not loadable"):
        check_wasm_header(component[:8], WHERE)


@pytest.mark.parametrize(
    "blob",
    [
        make_layer_tar({"plugin.wasm": MODULE}),
        gzip_bytes(make_layer_tar({"plugin.wasm": MODULE})),
        v7_tar("plugin.wasm", MODULE),
    ],
    ids=["tar", "tar+gzip", "v7-tar"],
)
def test_real_tarball_is_unpacked_as_compat(blob: bytes) -> None:
    """oras push of a plugin tarball: the bytes say tarball, extract_plugin takes over."""
    assert sniff(blob) is Unpack.TARBALL
    out = io.BytesIO()
    module_hex, size = extract_plugin(io.BytesIO(blob), out, limit=1 << 20, where=WHERE)
    assert (module_hex, size, out.getvalue()) == (digest_of(MODULE)[7:], len(MODULE), MODULE)


def test_gnu_tar_is_a_tarball() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(MODULE)
        tar.addfile(info, io.BytesIO(MODULE))
    assert sniff(buf.getvalue()) is Unpack.TARBALL


@pytest.mark.parametrize(
    ("blob", "hint"),
    [
        (b"\x28\xb5\x2f\xfd" + b"\0" * 600, "(zstd data, which is not supported)"),
        (b'{"type": "envoy_proxy"}', "(JSON)"),
        (b"<!DOCTYPE html>", "(HTML or XML)"),
        (b"\x7fELF\x02\x01\x01\0" + b"\0" * 600, "(an ELF executable)"),
        (b"", "it is empty"),
        (b"hello", "it starts with 68656c6c6f"),
        (b"\0as", "it starts with 006173"),
        (b"\0" * 1024, "it starts with 0000000000000000"),  # end-of-archive blocks only
    ],
)
def test_other_bytes_are_refused_saying_what_they_are(blob: bytes, hint: str) -> None:
    message = sniff_refused(blob)
    assert f"{WHERE}: its only layer ({mt.OCI_LAYER_TAR}) is neither" in message
    assert hint in message
    assert "\\0asm" in message
    assert "plugin.wasm" in message


def test_block_with_a_wrong_checksum_is_not_a_tar() -> None:
    blob = bytearray(v7_tar("plugin.wasm", MODULE))
    blob[0] = ord("q")  # the checksum no longer matches
    sniff_refused(bytes(blob))


def test_sniff_refusal_shortens_a_hostile_media_type() -> None:
    layer = Descriptor("application/" + "y" * 3000, fake_digest(1), 5)
    message = sniff_refused(b"hello", layer)
    assert "y" * 200 not in message


def test_oras_pushed_raw_module_end_to_end() -> None:
    """What the puller does for `oras push ref plugin.wasm`: select, download, sniff, check."""
    fmt, layer = select(ORAS_1_PUSH)
    assert fmt.unpack is Unpack.SNIFF
    assert sniff_unpack(MODULE[:SNIFF_BYTES], layer, WHERE) is Unpack.RAW
    check_wasm_header(MODULE[:8], WHERE)
    assert layer.digest == digest_of(MODULE)
