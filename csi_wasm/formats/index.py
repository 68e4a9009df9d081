"""Image indexes (OCI image index, Docker manifest list): which manifest to follow.

A multi-platform push (``docker buildx``, ``buildah manifest``) serves an index whose
entries carry a platform. We follow the entry for Wasm (os ``wasip1``/``wasip2`` or
architecture ``wasm``/``wasm32``); failing that, the only entry. Attestation entries
(BuildKit's provenance and SBOM manifests: annotation ``vnd.docker.reference.type:
attestation-manifest``, platform ``unknown/unknown``) are not candidates.

The caller fetches the chosen child by digest; :func:`check_index_hop` keeps that walk
finite (no loops, at most :data:`MAX_INDEX_DEPTH` indexes on the way to a manifest).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import mediatypes
from csi_wasm.formats.manifest import Descriptor, json_object, parse_descriptor, shorten

__all__ = [
    "MAX_CHILD_MANIFEST_BYTES",
    "MAX_INDEX_DEPTH",
    "check_index_hop",
    "choose_manifest",
    "is_index",
]

MAX_CHILD_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_INDEX_DEPTH = 2  # indexes on the way from the url to a manifest: index -> index -> manifest
WASM_OSES = frozenset({"wasip1", "wasip2"})
WASM_ARCHITECTURES = frozenset({"wasm", "wasm32"})
COMPONENT_OSES = frozenset({"wasip2"})  # components; Envoy loads core modules only
REFERENCE_TYPE = "vnd.docker.reference.type"
ATTESTATION = "attestation-manifest"
_CHILD_TYPES = mediatypes.IMAGE_MANIFESTS | mediatypes.INDEXES
_SHOWN_PLATFORMS = 8
_ACCEPTED = (
    "accepted: an index with one entry for os wasip1/wasip2 or architecture wasm/wasm32, "
    "or with a single entry"
)


@dataclass(frozen=True)
class _Entry:
    descriptor: Descriptor
    os: str | None
    architecture: str | None
    variant: str | None
    attestation: bool

    @property
    def is_wasm(self) -> bool:
        return self.os in WASM_OSES or self.architecture in WASM_ARCHITECTURES

    @property
    def platform(self) -> str:
        if self.os is None and self.architecture is None:
            return "no platform"
        parts = [self.os or "?", self.architecture or "?"]
        if self.variant:
            parts.append(self.variant)
        return "/".join(shorten(part, 30) for part in parts)


def is_index(media_type: str, body: bytes) -> bool:
    """Whether a manifest response is an image index rather than a single manifest.

    The body's ``mediaType`` decides when it names a manifest or index kind, then
    ``media_type`` (the response's), then the shape: a ``manifests`` list and no
    ``layers``. A body that is not a JSON object is not an index (the manifest parser
    refuses it with a better message).
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(document, dict):
        return False
    for declared in (document.get("mediaType"), media_type):
        if isinstance(declared, str):
            if declared in mediatypes.INDEXES:
                return True
            if declared in mediatypes.IMAGE_MANIFESTS:
                return False
    return isinstance(document.get("manifests"), list) and "layers" not in document


def choose_manifest(body: bytes, content_type: str, where: str) -> Descriptor:
    """The descriptor of the manifest (or nested index) to follow in an index.

    FAILED_PRECONDITION for a malformed index, one without a usable entry, one with
    several and none for Wasm (naming the platforms found), or a chosen child that is
    not a manifest or index, or is larger than :data:`MAX_CHILD_MANIFEST_BYTES`.
    """
    document = json_object(body, where)
    raw_entries = document.get("manifests")
    if not isinstance(raw_entries, list):
        raise FailedPrecondition(
            f"{where} is a malformed image index (no manifests list; served as "
            f"{shorten(content_type or 'no content type', 60)})"
        )
    entries = [_entry(raw, number, where) for number, raw in enumerate(raw_entries)]
    candidates = [entry for entry in entries if not entry.attestation]
    wasm = _unique([entry for entry in candidates if entry.is_wasm])
    if wasm:
        chosen = _one_wasm(wasm, where)
    elif len(_unique(candidates)) == 1:
        chosen = candidates[0]
    elif not candidates:
        found = f"{len(entries)} entries, all attestations" if entries else "it is empty"
        raise FailedPrecondition(
            f"{where} is an image index with no manifest to follow ({found}); {_ACCEPTED}"
        )
    else:
        raise FailedPrecondition(
            f"{where} is an image index of {len(candidates)} manifests, none for Wasm: "
            f"found {_platforms(candidates)}; {_ACCEPTED}"
        )
    return _checked_child(chosen, where)


def check_index_hop(chain: Sequence[str], child: Descriptor, where: str) -> None:
    """Refuse following ``child`` out of an index when that would loop or nest too deep.

    ``chain`` holds the digests of the indexes followed so far, the url's first and the
    one ``child`` was chosen from last.
    """
    if child.digest in chain:
        raise FailedPrecondition(
            f"{where} is an image index that refers back to itself ({child.digest[:19]}...); "
            "refusing to follow the loop"
        )
    too_deep = len(chain) > MAX_INDEX_DEPTH or (
        len(chain) == MAX_INDEX_DEPTH and child.media_type in mediatypes.INDEXES
    )
    if too_deep:
        raise FailedPrecondition(
            f"{where} nests image indexes more than {MAX_INDEX_DEPTH} deep; "
            "point the url at the Wasm platform's manifest"
        )


def _entry(raw: Any, number: int, where: str) -> _Entry:
    try:
        descriptor = parse_descriptor(raw)
        platform = _object(raw, "platform")
        annotations = _object(raw, "annotations")
        os_name, architecture, variant = (
            _optional_string(platform, key) for key in ("os", "architecture", "variant")
        )
    except (KeyError, TypeError, ValueError) as error:
        raise FailedPrecondition(
            f"{where} is a malformed image index (entry {number}: {error})"
        ) from error
    attestation = annotations.get(REFERENCE_TYPE) == ATTESTATION or (
        os_name == "unknown" and architecture == "unknown"
    )
    return _Entry(descriptor, os_name, architecture, variant, attestation)


def _object(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise TypeError(f"descriptor {key} must be an object")
    return value


def _optional_string(mapping: dict[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"platform {key} must be a string")
    return value


def _unique(entries: list[_Entry]) -> list[_Entry]:
    """Entries with distinct digests (an index may list one manifest twice)."""
    seen: dict[str, _Entry] = {}
    for entry in entries:
        seen.setdefault(entry.descriptor.digest, entry)
    return list(seen.values())


def _one_wasm(wasm: list[_Entry], where: str) -> _Entry:
    if len(wasm) == 1:
        return wasm[0]
    modules = [entry for entry in wasm if entry.os not in COMPONENT_OSES]
    if len(modules) == 1:
        return modules[0]
    raise FailedPrecondition(
        f"{where} is an image index with {len(wasm)} Wasm manifests: found "
        f"{_platforms(wasm)}; cannot tell which to use, point the url at one of them"
    )


def _checked_child(entry: _Entry, where: str) -> Descriptor:
    child = entry.descriptor
    if child.media_type not in _CHILD_TYPES:
        raise FailedPrecondition(
            f"{where} is an image index whose {entry.platform} entry has media type "
            f"{shorten(child.media_type)}; expected an OCI or Docker image manifest or index"
        )
    if child.size > MAX_CHILD_MANIFEST_BYTES:
        raise FailedPrecondition(
            f"{where} is an image index whose {entry.platform} entry declares a "
            f"{child.size}-byte manifest, over the {MAX_CHILD_MANIFEST_BYTES}-byte limit"
        )
    return child


def _platforms(entries: list[_Entry]) -> str:
    shown = [entry.platform for entry in entries[:_SHOWN_PLATFORMS]]
    if len(entries) > _SHOWN_PLATFORMS:
        shown.append(f"and {len(entries) - _SHOWN_PLATFORMS} more")
    return ", ".join(shown)
