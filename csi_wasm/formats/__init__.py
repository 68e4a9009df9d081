"""Packaging formats: how to find the Wasm module inside what a registry serves.

Each format is one small unit (a :class:`Format` value); :func:`select_format` tries
them in order. Adding a format means writing its module and listing it in FORMATS.
"""

from __future__ import annotations

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.artifact import WASM_ARTIFACT
from csi_wasm.formats.base import Format, Unpack
from csi_wasm.formats.compat import COMPAT_IMAGE
from csi_wasm.formats.manifest import Descriptor, ImageManifest, parse_image_manifest
from csi_wasm.formats.wasm import check_wasm_header

__all__ = [
    "FORMATS",
    "Descriptor",
    "Format",
    "ImageManifest",
    "Unpack",
    "check_wasm_header",
    "parse_image_manifest",
    "select_format",
]

FORMATS: tuple[Format, ...] = (WASM_ARTIFACT, COMPAT_IMAGE)


def select_format(manifest: ImageManifest, where: str) -> tuple[Format, Descriptor]:
    """The format of ``manifest`` and the layer that holds the module."""
    for candidate in FORMATS:
        layer = candidate.pick(manifest)
        if layer is not None:
            return candidate, layer
    accepted = "; ".join(candidate.accepted for candidate in FORMATS)
    raise FailedPrecondition(
        f"{where} is not a Wasm module package: found {manifest.describe()}; accepted: {accepted}"
    )
