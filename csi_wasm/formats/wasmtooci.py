"""Artifacts pushed by engineerd/wasm-to-oci (and ``cosign upload wasm``).

Config ``application/vnd.wasm.config.v1+json`` (the two bytes ``{}``) and one layer
``application/vnd.wasm.content.layer.v1+wasm``, titled with the file's path, that is
the raw module. The layer type is the claim.
"""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, Unpack, only_layer_of
from csi_wasm.formats.manifest import Descriptor, ImageManifest

_CONTENT = frozenset({mediatypes.WASM_TO_OCI_CONTENT_V1})


def _pick(manifest: ImageManifest) -> Descriptor | None:
    return only_layer_of(manifest, _CONTENT, "wasm-to-oci artifact")


WASM_TO_OCI = Format(
    name="wasm-to-oci",
    accepted=f"wasm-to-oci artifact (layer {mediatypes.WASM_TO_OCI_CONTENT_V1})",
    pick=_pick,
    unpack=Unpack.RAW,
)
