"""Images from early wasme (WebAssembly Hub, before the spec moved to ``module.wasm``).

Config ``application/vnd.io.solo.wasm.config.v1+json`` as the manifest config and one
layer ``application/vnd.io.solo.wasm.code.v1+wasm`` (titled ``code.wasm`` or
``filter.wasm``) that is the raw module. The code layer type is the claim.
"""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, Unpack, only_layer_of
from csi_wasm.formats.manifest import Descriptor, ImageManifest

_CODE = frozenset({mediatypes.SOLO_WASM_CODE_V1})


def _pick(manifest: ImageManifest) -> Descriptor | None:
    return only_layer_of(manifest, _CODE, "wasme image")


WASME_LEGACY = Format(
    name="wasme-legacy",
    accepted=f"early wasme image (layer {mediatypes.SOLO_WASM_CODE_V1})",
    pick=_pick,
    unpack=Unpack.RAW,
)
