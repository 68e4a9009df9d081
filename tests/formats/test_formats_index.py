"""Tests of csi_wasm.formats.index: telling an index from a manifest, and which entry to follow.

The indexes are written as the tools write them: ``docker buildx`` (OCI index with
BuildKit attestation manifests, ``unknown/unknown`` plus ``vnd.docker.reference.*``
annotations), Docker manifest lists with variants, and Wasm platforms as containerd's
Wasm shims and the CNCF Wasm artifact spell them (``wasip1/wasm``, ``wasi/wasm``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import Descriptor, check_index_hop, choose_manifest, is_index
from csi_wasm.formats import mediatypes as mt
from csi_wasm.formats.index import MAX_CHILD_MANIFEST_BYTES, MAX_INDEX_DEPTH

WHERE = "ghcr.io/acme/f:v1"
ATTESTATION_ANNOTATIONS = {"vnd.docker.reference.type": "attestation-manifest"}


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def entry(
    n: int,
    os: str | None = None,
    arch: str | None = None,
    *,
    variant: str | None = None,
    media_type: str = mt.OCI_MANIFEST,
    size: int = 1000,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    e: dict[str, Any] = {"mediaType": media_type, "digest": digest(n), "size": size}
    platform = {
        k: v for k, v in (("architecture", arch), ("os", os), ("variant", variant)) if v is not None
    }
    if platform:
        e["platform"] = platform
    if annotations is not None:
        e["annotations"] = annotations
    return e


def attestation(n: int, subject: int) -> dict[str, Any]:
    return entry(
        n,
        "unknown",
        "unknown",
        size=566,
        annotations={**ATTESTATION_ANNOTATIONS, "vnd.docker.reference.digest": digest(subject)},
    )


def index(*entries: dict[str, Any], media_type: str | None = mt.OCI_INDEX) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "manifests": list(entries)}
    if media_type is not None:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def choose(body: bytes, content_type: str = mt.OCI_INDEX) -> Descriptor:
    return choose_manifest(body, content_type, WHERE)


def refused(body: bytes, content_type: str = mt.OCI_INDEX) -> str:
    with pytest.raises(FailedPrecondition) as info:
        choose_manifest(body, content_type, WHERE)
    message = info.value.message
    assert "\n" not in message
    assert WHERE in message
    assert info.value.code == "FAILED_PRECONDITION"
    assert len(message) < 500
    return message


def picked(n: int, media_type: str = mt.OCI_MANIFEST, size: int = 1000) -> Descriptor:
    return Descriptor(media_type, digest(n), size)


# -- is_index ---------------------------------------------------------------------------

MANIFEST_BODY = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.WASM_CONFIG_V0, "digest": digest(1), "size": 2},
        "layers": [],
    }
).encode()


@pytest.mark.parametrize(
    ("media_type", "body", "expected"),
    [
        (mt.OCI_INDEX, index(entry(1)), True),
        (mt.DOCKER_MANIFEST_LIST, index(media_type=mt.DOCKER_MANIFEST_LIST), True),
        ("application/json", index(entry(1)), True),  # the body's mediaType
        (mt.OCI_INDEX, index(entry(1), media_type=None), True),  # the response's
        (mt.DOCKER_MANIFEST_LIST, index(media_type=None), True),
        ("", index(entry(1), media_type=None), True),  # the shape
        (mt.OCI_MANIFEST, MANIFEST_BODY, False),
        (mt.OCI_INDEX, MANIFEST_BODY, False),  # the body's mediaType wins, as in parsing
        ("", b'{"schemaVersion": 2, "layers": [], "manifests": []}', False),
        ("", b'{"schemaVersion": 2, "manifests": {}}', False),
        (mt.OCI_MANIFEST, index(entry(1), media_type=None), False),
        ("", b"<html>", False),
        (mt.OCI_INDEX, b"[1, 2]", False),
        (mt.OCI_INDEX, b"\xff\xfe", False),
        ("", b'{"mediaType": 7, "manifests": []}', True),
    ],
)
def test_is_index(media_type: str, body: bytes, expected: bool) -> None:
    assert is_index(media_type, body) is expected


# -- choosing the entry -----------------------------------------------------------------


def test_wasm_platform_is_preferred() -> None:
    body = index(entry(1, "linux", "amd64"), entry(2, "wasip1", "wasm"), entry(3, "linux", "arm64"))
    assert choose(body) == picked(2)


@pytest.mark.parametrize(
    ("os", "arch"),
    [("wasip1", "wasm"), ("wasip2", "wasm"), ("wasi", "wasm"), ("wasip1", None), (None, "wasm32")],
)
def test_every_wasm_platform_spelling(os: str | None, arch: str | None) -> None:
    body = index(entry(1, "linux", "amd64"), entry(2, os, arch), entry(3, "linux", "arm64"))
    assert choose(body) == picked(2)


def test_core_module_is_preferred_over_a_component() -> None:
    body = index(entry(1, "wasip2", "wasm"), entry(2, "wasip1", "wasm"))
    assert choose(body) == picked(2)


def test_two_wasm_modules_are_ambiguous() -> None:
    message = refused(index(entry(1, "wasip1", "wasm"), entry(2, "wasi", "wasm")))
    assert "2 Wasm manifests" in message
    assert "found wasip1/wasm, wasi/wasm" in message


def test_one_manifest_listed_twice_is_not_ambiguous() -> None:
    body = index(entry(1, "wasip1", "wasm"), entry(1, "wasip1", "wasm"), entry(2, "linux", "amd64"))
    assert choose(body) == picked(1)


def test_single_entry_is_followed_whatever_its_platform() -> None:
    assert choose(index(entry(1, "linux", "amd64"))) == picked(1)
    assert choose(index(entry(2))) == picked(2)  # no platform at all


def test_buildx_single_platform_with_provenance() -> None:
    """buildx >= 0.10 wraps even one platform in an index, with an attestation manifest."""
    body = index(entry(1, "linux", "amd64", size=1600), attestation(2, subject=1))
    assert choose(body) == picked(1, size=1600)


def test_attestation_by_annotation_alone_is_ignored() -> None:
    body = index(entry(1, "linux", "amd64"), entry(2, annotations=ATTESTATION_ANNOTATIONS))
    assert choose(body) == picked(1)


def test_unknown_platform_alone_is_ignored() -> None:
    body = index(entry(1, "unknown", "unknown"), entry(2, "linux", "amd64"))
    assert choose(body) == picked(2)


def test_attestation_for_a_wasm_entry_does_not_compete() -> None:
    body = index(
        entry(1, "linux", "amd64"),
        attestation(2, subject=1),
        entry(3, "wasip1", "wasm"),
        attestation(4, subject=3),
    )
    assert choose(body) == picked(3)


def test_several_platforms_without_wasm_lists_them() -> None:
    body = index(
        entry(1, "linux", "amd64"),
        entry(2, "linux", "arm64", variant="v8"),
        attestation(3, subject=1),
        attestation(4, subject=2),
        entry(5),
    )
    message = refused(body)
    assert "image index of 3 manifests, none for Wasm" in message
    assert "found linux/amd64, linux/arm64/v8, no platform;" in message
    assert "unknown" not in message
    assert "accepted: an index with one entry for os wasip1/wasip2" in message
    assert "or with a single entry" in message


def test_docker_manifest_list() -> None:
    body = index(
        entry(1, "linux", "amd64", media_type=mt.DOCKER_MANIFEST),
        entry(2, "linux", "arm", variant="v7", media_type=mt.DOCKER_MANIFEST),
        media_type=mt.DOCKER_MANIFEST_LIST,
    )
    assert "found linux/amd64, linux/arm/v7" in refused(body, mt.DOCKER_MANIFEST_LIST)
    single = index(entry(1, "linux", "amd64", media_type=mt.DOCKER_MANIFEST), media_type=None)
    assert choose(single, mt.DOCKER_MANIFEST_LIST) == picked(1, mt.DOCKER_MANIFEST)


def test_many_platforms_are_listed_bounded() -> None:
    entries = [entry(n, "linux", f"arch{n}-" + "z" * 500) for n in range(1, 40)]
    message = refused(index(*entries))
    assert "and 31 more" in message
    assert "z" * 40 not in message


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (index(), "it is empty"),
        (index(attestation(1, 9), attestation(2, 9)), "2 entries, all attestations"),
    ],
)
def test_nothing_to_follow(body: bytes, found: str) -> None:
    message = refused(body)
    assert f"no manifest to follow ({found})" in message


def test_nested_index_may_be_chosen() -> None:
    body = index(entry(1, "wasip1", "wasm", media_type=mt.OCI_INDEX))
    assert choose(body) == picked(1, mt.OCI_INDEX)


def test_child_size_limit() -> None:
    at_limit = index(entry(1, "wasip1", "wasm", size=MAX_CHILD_MANIFEST_BYTES))
    assert choose(at_limit).size == MAX_CHILD_MANIFEST_BYTES
    over = index(entry(1, "wasip1", "wasm", size=MAX_CHILD_MANIFEST_BYTES + 1))
    message = refused(over)
    assert f"{MAX_CHILD_MANIFEST_BYTES + 1}-byte manifest" in message
    assert "wasip1/wasm entry" in message
    assert MAX_CHILD_MANIFEST_BYTES == 4 * 1024 * 1024


def test_oversized_entry_that_is_not_chosen_does_not_matter() -> None:
    body = index(entry(1, "linux", "amd64", size=1 << 40), entry(2, "wasip1", "wasm"))
    assert choose(body) == picked(2)


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.oci.artifact.manifest.v1+json", mt.WASM_LAYER, "x" * 3000],
)
def test_child_that_is_not_a_manifest_is_refused(media_type: str) -> None:
    message = refused(index(entry(1, "wasip1", "wasm", media_type=media_type)))
    assert "expected an OCI or Docker image manifest or index" in message
    assert media_type[:50] in message


# -- malformed indexes and descriptors ----------------------------------------------------


def with_entry(**fields: Any) -> bytes:
    e = entry(1, "wasip1", "wasm")
    e.update(fields)
    return index({k: v for k, v in e.items() if v is not None})


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (with_entry(digest="sha512:" + "ab" * 64), "only sha256"),
        (with_entry(digest="md5:" + "ab" * 16), "only sha256"),
        (with_entry(digest="sha256:abc"), "malformed sha256 digest"),
        (with_entry(digest="sha256:" + "AB" * 32), "malformed sha256 digest"),
        (with_entry(digest="sha256:../../v2/x/blobs/" + "a" * 40), "malformed sha256 digest"),
        (with_entry(digest=None), "'digest'"),
        (with_entry(digest=7), "must be strings"),
        (with_entry(mediaType=None), "'mediaType'"),
        (with_entry(size=None), "'size'"),
        (with_entry(size=-1), "non-negative integer"),
        (with_entry(size=True), "non-negative integer"),
        (with_entry(size="10"), "non-negative integer"),
        (with_entry(size=1.5), "non-negative integer"),
        (with_entry(platform="linux/amd64"), "platform must be an object"),
        (with_entry(platform={"os": ["wasip1"]}), "platform os must be a string"),
        (with_entry(platform={"os": "wasip1", "architecture": 32}), "architecture must be"),
        (with_entry(annotations=["x"]), "annotations must be an object"),
        (index("sha256:" + "0" * 64), "not an object"),  # type: ignore[arg-type]
    ],
)
def test_malformed_entry_is_refused(body: bytes, hint: str) -> None:
    message = refused(body)
    assert "malformed image index (entry 0:" in message
    assert hint in message


def test_malformed_ignored_entry_still_makes_the_index_malformed() -> None:
    """As with layers of a manifest: every entry must be a valid descriptor."""
    body = index(entry(1, "wasip1", "wasm"), {**attestation(2, 1), "digest": "sha512:" + "a" * 128})
    assert "malformed image index (entry 1:" in refused(body)


def test_hostile_digest_is_shortened() -> None:
    assert len(refused(with_entry(digest="sha256:" + "x" * 5000))) < 300


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}', ""),
        (b'{"manifests": {"a": 1}}', ""),
        (b'{"manifests": null}', ""),
    ],
)
def test_index_without_a_manifests_list(body: bytes, hint: str) -> None:
    message = refused(body)
    assert "malformed image index (no manifests list; served as " in message
    assert hint in message


def test_content_type_is_named_when_the_list_is_missing() -> None:
    message = refused(b"{}", mt.DOCKER_MANIFEST_LIST)
    assert f"served as {mt.DOCKER_MANIFEST_LIST})" in message
    assert "served as no content type" in refused(b"{}", "")


@pytest.mark.parametrize("body", [b"<html>", b"", b"[]", b"null"])
def test_not_a_json_object(body: bytes) -> None:
    refused(body)


# -- following children -------------------------------------------------------------------


def hop_refused(chain: Sequence[str], child: Descriptor) -> str:
    with pytest.raises(FailedPrecondition) as info:
        check_index_hop(chain, child, WHERE)
    message = info.value.message
    assert WHERE in message
    assert "\n" not in message
    return message


def test_max_depth_is_two() -> None:
    assert MAX_INDEX_DEPTH == 2


def test_index_to_manifest_and_index_to_index_to_manifest_are_allowed() -> None:
    check_index_hop([digest(1)], picked(2), WHERE)
    check_index_hop([digest(1)], picked(2, mt.OCI_INDEX), WHERE)
    check_index_hop([digest(1), digest(2)], picked(3), WHERE)
    check_index_hop([digest(1), digest(2)], picked(3, mt.DOCKER_MANIFEST), WHERE)


@pytest.mark.parametrize("chain", [[digest(1)], [digest(9), digest(1)]])
def test_index_pointing_at_itself_or_back_is_refused(chain: list[str]) -> None:
    message = hop_refused(chain, picked(1))
    assert "refers back to itself" in message
    assert digest(1)[:19] in message


@pytest.mark.parametrize(
    ("chain", "child"),
    [
        ([digest(1), digest(2)], picked(3, mt.OCI_INDEX)),  # a third index, seen in advance
        ([digest(1), digest(2)], picked(3, mt.DOCKER_MANIFEST_LIST)),
        ([digest(1), digest(2), digest(3)], picked(4)),  # a third index that lied about it
    ],
)
def test_nesting_deeper_than_two_is_refused(chain: list[str], child: Descriptor) -> None:
    assert "nests image indexes more than 2 deep" in hop_refused(chain, child)
