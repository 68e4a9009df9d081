"""Parse image manifests into the few fields the formats look at."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import mediatypes

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
# Bounds on what a refusal message quotes from a manifest.
_SHOWN_LAYERS = 6
_SHOWN_CHARS = 100


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str | None = None

    def describe(self) -> str:
        """A short summary for error messages: what was found (bounded in length)."""
        shown = [shorten(layer.media_type) for layer in self.layers[:_SHOWN_LAYERS]]
        if len(self.layers) > _SHOWN_LAYERS:
            shown.append(f"and {len(self.layers) - _SHOWN_LAYERS} more")
        layers = ", ".join(shown) or "none"
        return f"config {shorten(self.config.media_type)}, layers [{layers}]"


def shorten(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters for a message (it may come from a registry)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_image_manifest(body: bytes, content_type: str, where: str) -> ImageManifest:
    """Read an OCI or Docker v2 image manifest; FAILED_PRECONDITION if it is anything else."""
    document = json_object(body, where)
    media_type: object = document.get("mediaType") or content_type
    if not isinstance(media_type, str):
        raise FailedPrecondition(
            f"{where} has manifest type {shorten(repr(media_type), 60)}; "
            "expected an OCI or Docker v2 image manifest"
        )
    if media_type in mediatypes.INDEXES:
        raise FailedPrecondition(
            f"{where} is an image index, not a single manifest; "
            "point the url at one platform's manifest"
        )
    if media_type not in mediatypes.IMAGE_MANIFESTS and "layers" not in document:
        raise FailedPrecondition(
            f"{where} has manifest type {shorten(repr(media_type))}; "
            "expected an OCI or Docker v2 image manifest"
        )
    try:
        config = parse_descriptor(document["config"])
        layers = tuple(parse_descriptor(layer) for layer in document["layers"])
    except (KeyError, TypeError, ValueError) as error:
        raise FailedPrecondition(f"{where} has a malformed manifest ({error})") from error
    artifact_type = document.get("artifactType")
    return ImageManifest(
        media_type=media_type,
        config=config,
        layers=layers,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )


def json_object(body: bytes, where: str) -> dict[str, Any]:
    """``body`` as a JSON object; FAILED_PRECONDITION if it is not one."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # RecursionError: arrays or objects nested deeper than Python's recursion limit
        raise FailedPrecondition(
            f"{where} did not return a JSON manifest; is the url an OCI registry?"
        ) from error
    if not isinstance(document, dict):
        raise FailedPrecondition(f"{where} returned JSON that is not a manifest object")
    return document


def parse_descriptor(raw: Any) -> Descriptor:
    """An OCI descriptor; KeyError, TypeError or ValueError (with a short reason) if malformed.

    Only sha256 digests are accepted, in canonical form (64 lowercase hex digits), so
    a digest can go into a registry path as it is.
    """
    if not isinstance(raw, dict):
        raise TypeError("descriptor is not an object")
    media_type, digest, size = raw["mediaType"], raw["digest"], raw["size"]
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise TypeError("descriptor mediaType and digest must be strings")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError("descriptor size must be a non-negative integer")
    if not digest.startswith("sha256:"):
        raise ValueError(f"unsupported digest algorithm in {digest[:20]!r}; only sha256 is")
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"malformed sha256 digest {digest[:80]!r}")
    return Descriptor(media_type, digest, size)
