"""Packaging formats: how to find the Wasm module inside what a registry serves.

Each format is one small unit (a :class:`Format` value); :func:`select_format` tries
them in order. Adding a format means writing its module and listing it in FORMATS.

FORMATS goes from the most specific claim to the least:

1. ``wasm-artifact``: the CNCF config type claims the manifest outright (or refuses it).
2. ``solo-oci``, ``wasme-legacy``, ``wasm-to-oci``: each claims a layer media type that
   only its tool writes, whatever the config; they cannot both match a real manifest.
3. ``compat-image``: a container image (image config) whose last layer is a tarball.
4. ``single-layer``: any other one-layer artifact; its bytes decide (``Unpack.SNIFF``).

An index (multi-platform image) is resolved to one manifest first, see
:mod:`csi_wasm.formats.index`.
"""

from __future__ import annotations

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.artifact import WASM_ARTIFACT
from csi_wasm.formats.base import Format, PackageError, Unpack
from csi_wasm.formats.compat import COMPAT_IMAGE
from csi_wasm.formats.index import check_index_hop, choose_manifest, is_index
from csi_wasm.formats.manifest import Descriptor, ImageManifest, parse_image_manifest
from csi_wasm.formats.single import SINGLE_LAYER
from csi_wasm.formats.sniff import SNIFF_BYTES, sniff_unpack
from csi_wasm.formats.solo import SOLO_OCI
from csi_wasm.formats.wasm import check_wasm_header
from csi_wasm.formats.wasme import WASME_LEGACY
from csi_wasm.formats.wasmtooci import WASM_TO_OCI

__all__ = [
    "FORMATS",
    "SNIFF_BYTES",
    "Descriptor",
    "Format",
    "ImageManifest",
    "PackageError",
    "Unpack",
    "check_index_hop",
    "check_wasm_header",
    "choose_manifest",
    "is_index",
    "parse_image_manifest",
    "select_format",
    "sniff_unpack",
]

FORMATS: tuple[Format, ...] = (
    WASM_ARTIFACT,
    SOLO_OCI,
    WASME_LEGACY,
    WASM_TO_OCI,
    COMPAT_IMAGE,
    SINGLE_LAYER,
)


def select_format(manifest: ImageManifest, where: str) -> tuple[Format, Descriptor]:
    """The format of ``manifest`` and the layer that holds the module."""
    for candidate in FORMATS:
        try:
            layer = candidate.pick(manifest)
        except PackageError as error:
            raise FailedPrecondition(f"{where}: {error.message}") from error
        if layer is not None:
            return candidate, layer
    accepted = "; ".join(candidate.accepted for candidate in FORMATS)
    raise FailedPrecondition(
        f"{where} is not a Wasm module package: found {manifest.describe()}; accepted: {accepted}"
    )
