"""The CNCF Wasm OCI artifact: config ``application/vnd.wasm.config.v0+json``, one Wasm layer.

The config type is the claim: a manifest with it is this format or refused, even if
another format would also match its layers.
"""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, PackageError, Unpack
from csi_wasm.formats.manifest import Descriptor, ImageManifest


def _pick(manifest: ImageManifest) -> Descriptor | None:
    if manifest.config.media_type != mediatypes.WASM_CONFIG_V0:
        return None
    wasm_layers = [layer for layer in manifest.layers if layer.media_type == mediatypes.WASM_LAYER]
    if len(wasm_layers) != 1:
        raise PackageError(
            f"Wasm artifact has {len(wasm_layers)} layers of type {mediatypes.WASM_LAYER}; "
            "exactly one is required"
        )
    return wasm_layers[0]


WASM_ARTIFACT = Format(
    name="wasm-artifact",
    accepted=f"Wasm artifact (config {mediatypes.WASM_CONFIG_V0}, layer {mediatypes.WASM_LAYER})",
    pick=_pick,
    unpack=Unpack.RAW,
)
