"""Parse image manifests into the few fields the formats look at."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import mediatypes


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
        """A short summary for error messages: what was found."""
        layers = ", ".join(layer.media_type for layer in self.layers) or "none"
        return f"config {self.config.media_type}, layers [{layers}]"


def parse_image_manifest(body: bytes, content_type: str, where: str) -> ImageManifest:
    """Read an OCI or Docker v2 image manifest; FAILED_PRECONDITION if it is anything else."""
    document = _json_object(body, where)
    media_type = document.get("mediaType") or content_type
    if media_type in mediatypes.INDEXES:
        raise FailedPrecondition(
            f"{where} is an image index, not a single manifest; "
            "point the url at one platform's manifest"
        )
    if media_type not in mediatypes.IMAGE_MANIFESTS and "layers" not in document:
        raise FailedPrecondition(
            f"{where} has manifest type {media_type!r}; expected an OCI or Docker v2 image manifest"
        )
    try:
        config = _descriptor(document["config"])
        layers = tuple(_descriptor(layer) for layer in document["layers"])
    except (KeyError, TypeError, ValueError) as error:
        raise FailedPrecondition(f"{where} has a malformed manifest ({error})") from error
    artifact_type = document.get("artifactType")
    return ImageManifest(
        media_type=str(media_type),
        config=config,
        layers=layers,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )


def _json_object(body: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise FailedPrecondition(
            f"{where} did not return a JSON manifest; is the url an OCI registry?"
        ) from error
    if not isinstance(document, dict):
        raise FailedPrecondition(f"{where} returned JSON that is not a manifest object")
    return document


def _descriptor(raw: Any) -> Descriptor:
    if not isinstance(raw, dict):
        raise TypeError("descriptor is not an object")
    media_type, digest, size = raw["mediaType"], raw["digest"], raw["size"]
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise TypeError("descriptor mediaType and digest must be strings")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError("descriptor size must be a non-negative integer")
    if not digest.startswith("sha256:"):
        raise ValueError(f"unsupported digest algorithm in {digest[:20]!r}; only sha256 is")
    return Descriptor(media_type, digest, size)
