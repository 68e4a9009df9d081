"""Tests of csi_wasm.formats.manifest: parsing image manifests defensively."""

from __future__ import annotations

import json
from typing import Any

import pytest

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import Descriptor, ImageManifest, parse_image_manifest
from csi_wasm.formats import mediatypes as mt

WHERE = "ghcr.io/acme/f:v1"
CONFIG_DIGEST = "sha256:" + "c0" * 32
LAYER_DIGEST = "sha256:" + "1a" * 32


def desc(media_type: str, digest: str = LAYER_DIGEST, size: int = 10) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def manifest(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": desc(mt.WASM_CONFIG_V0, CONFIG_DIGEST, 2),
        "layers": [desc(mt.WASM_LAYER)],
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def refused(body: bytes, content_type: str = "") -> str:
    with pytest.raises(FailedPrecondition) as info:
        parse_image_manifest(body, content_type, WHERE)
    message = info.value.message
    assert "\n" not in message
    assert WHERE in message
    assert info.value.code == "FAILED_PRECONDITION"
    return message


def test_oci_manifest() -> None:
    doc = manifest(artifactType="application/vnd.wasm.config.v0+json")
    parsed = parse_image_manifest(encode(doc), mt.OCI_MANIFEST, WHERE)
    assert parsed == ImageManifest(
        media_type=mt.OCI_MANIFEST,
        config=Descriptor(mt.WASM_CONFIG_V0, CONFIG_DIGEST, 2),
        layers=(Descriptor(mt.WASM_LAYER, LAYER_DIGEST, 10),),
        artifact_type="application/vnd.wasm.config.v0+json",
    )


def test_docker_manifest_with_several_layers() -> None:
    doc = manifest(
        mediaType=mt.DOCKER_MANIFEST,
        config=desc("application/vnd.docker.container.image.v1+json", CONFIG_DIGEST, 300),
        layers=[
            desc(mt.DOCKER_LAYER_TAR_GZIP, "sha256:" + "01" * 32, 1),
            desc(mt.DOCKER_LAYER_TAR_GZIP, "sha256:" + "02" * 32, 2),
        ],
    )
    parsed = parse_image_manifest(encode(doc), mt.DOCKER_MANIFEST, WHERE)
    assert parsed.media_type == mt.DOCKER_MANIFEST
    assert [layer.size for layer in parsed.layers] == [1, 2]
    assert parsed.layers[1].digest == "sha256:" + "02" * 32
    assert parsed.artifact_type is None


def test_media_type_from_content_type_when_body_has_none() -> None:
    doc = manifest(mediaType=None)
    parsed = parse_image_manifest(encode(doc), mt.DOCKER_MANIFEST, WHERE)
    assert parsed.media_type == mt.DOCKER_MANIFEST


def test_body_media_type_wins_over_content_type() -> None:
    parsed = parse_image_manifest(encode(manifest()), "application/json", WHERE)
    assert parsed.media_type == mt.OCI_MANIFEST


def test_untyped_document_with_layers_is_accepted() -> None:
    parsed = parse_image_manifest(encode(manifest(mediaType=None)), "application/json", WHERE)
    assert parsed.layers[0].media_type == mt.WASM_LAYER


def test_empty_layers() -> None:
    parsed = parse_image_manifest(encode(manifest(layers=[])), "", WHERE)
    assert parsed.layers == ()
    assert parsed.describe() == f"config {mt.WASM_CONFIG_V0}, layers [none]"


def test_describe_lists_layers() -> None:
    doc = manifest(layers=[desc(mt.OCI_LAYER_TAR), desc(mt.WASM_LAYER)])
    parsed = parse_image_manifest(encode(doc), "", WHERE)
    layers = f"{mt.OCI_LAYER_TAR}, {mt.WASM_LAYER}"
    assert parsed.describe() == f"config {mt.WASM_CONFIG_V0}, layers [{layers}]"


def test_non_string_artifact_type_is_dropped() -> None:
    parsed = parse_image_manifest(encode(manifest(artifactType=7)), "", WHERE)
    assert parsed.artifact_type is None


@pytest.mark.parametrize("media_type", [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST])
def test_index_is_refused(media_type: str) -> None:
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": []}
    message = refused(encode(index), media_type)
    assert "image index" in message
    assert "platform" in message


def test_index_by_content_type_only_is_refused() -> None:
    message = refused(encode({"schemaVersion": 2, "manifests": []}), mt.OCI_INDEX)
    assert "image index" in message


def test_index_even_with_layers_is_refused() -> None:
    doc = manifest(mediaType=mt.OCI_INDEX, manifests=[])
    assert "image index" in refused(encode(doc), mt.OCI_INDEX)


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html><body>Sign in</body></html>",
        b"",
        b"\xff\xfe\x00\x01",
        b'{"layers": [',
        b"\0asm\x01\0\0\0",
    ],
)
def test_non_json_is_refused(body: bytes) -> None:
    message = refused(body, "text/html")
    assert "JSON" in message
    assert "OCI registry" in message


@pytest.mark.parametrize("body", [b"[]", b'"manifest"', b"42", b"null"])
def test_json_that_is_not_an_object_is_refused(body: bytes) -> None:
    assert "not a manifest object" in refused(body, mt.OCI_MANIFEST)


def test_schema1_manifest_is_refused() -> None:
    doc = {"schemaVersion": 1, "name": "a", "tag": "v1", "fsLayers": [{"blobSum": LAYER_DIGEST}]}
    content_type = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    message = refused(encode(doc), content_type)
    assert repr(content_type) in message
    assert "OCI or Docker v2 image manifest" in message


def test_unknown_type_without_layers_is_refused() -> None:
    message = refused(encode({"mediaType": "application/vnd.acme+json"}), "")
    assert "'application/vnd.acme+json'" in message


@pytest.mark.parametrize(
    ("doc", "hint"),
    [
        (manifest(config=None), "'config'"),
        (manifest(layers=None), "'layers'"),
        (manifest(config="sha256:abc"), "not an object"),
        (manifest(layers=[desc(mt.WASM_LAYER), "x"]), "not an object"),
        (manifest(layers={"a": 1}), "not an object"),
        (manifest(layers=5), "not iterable"),
        (manifest(layers=None, mediaType=mt.OCI_MANIFEST), "'layers'"),
        (manifest(config={"digest": CONFIG_DIGEST, "size": 1}), "'mediaType'"),
        (manifest(config={"mediaType": "a", "size": 1}), "'digest'"),
        (manifest(config={"mediaType": "a", "digest": CONFIG_DIGEST}), "'size'"),
        (manifest(layers=[desc(5)]), "must be strings"),  # type: ignore[arg-type]
        (manifest(layers=[{**desc(mt.WASM_LAYER), "digest": None}]), "must be strings"),
        (manifest(layers=[desc(mt.WASM_LAYER, size=-1)]), "non-negative integer"),
        (manifest(layers=[{**desc(mt.WASM_LAYER), "size": "10"}]), "non-negative integer"),
        (manifest(layers=[{**desc(mt.WASM_LAYER), "size": 1.5}]), "non-negative integer"),
        (manifest(layers=[{**desc(mt.WASM_LAYER), "size": True}]), "non-negative integer"),
    ],
)
def test_malformed_descriptors_are_refused(doc: dict[str, Any], hint: str) -> None:
    message = refused(encode(doc), mt.OCI_MANIFEST)
    assert "malformed manifest" in message
    assert hint in message


@pytest.mark.parametrize(
    "digest",
    [
        "sha512:" + "ab" * 64,
        "md5:" + "ab" * 16,
        "SHA256:" + "ab" * 32,
        "ab" * 32,
    ],
)
def test_non_sha256_digests_are_refused(digest: str) -> None:
    message = refused(encode(manifest(layers=[desc(mt.WASM_LAYER, digest)])))
    assert "only sha256" in message


def test_non_sha256_config_digest_is_refused() -> None:
    doc = manifest(config=desc(mt.WASM_CONFIG_V0, "sha512:" + "ab" * 64))
    assert "only sha256" in refused(encode(doc))


def test_hostile_digest_is_shortened_in_message() -> None:
    doc = manifest(layers=[desc(mt.WASM_LAYER, "x" * 5000)])
    assert len(refused(encode(doc))) < 400


@pytest.mark.parametrize(
    "digest", ["sha256:abc", "sha256:" + "AB" * 32, "sha256:../../../v2/other/blobs/x"]
)
def test_malformed_sha256_digest_is_refused(digest: str) -> None:
    refused(encode(manifest(layers=[desc(mt.WASM_LAYER, digest)])))


@pytest.mark.parametrize("media_type", [[mt.OCI_MANIFEST], {"a": 1}])
def test_unhashable_media_type_is_refused(media_type: Any) -> None:
    refused(encode(manifest(mediaType=media_type)), mt.OCI_MANIFEST)


def test_non_string_media_type_without_layers_is_refused() -> None:
    doc = manifest(mediaType=5, layers=None)
    assert "manifest type 5" in refused(encode(doc), mt.OCI_MANIFEST)
