"""Solo.io's "oci" variant of the Wasm image spec, as wasme and Gloo push it.

What wasme writes (``tools/wasme/pkg/push/push.go``): two layers, the runtime config
``application/vnd.module.wasm.config.v1+json`` (titled ``runtime-config.json``) and the
module ``application/vnd.module.wasm.content.layer.v1+wasm`` (titled ``filter.wasm``),
with the config descriptor also used as the manifest's config. Others push the same two
files with ``oras push``, leaving oras's own config. The content layer type is the
claim; the config may be in either place or absent. The layer is the raw module.
"""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, Unpack, only_layer_of
from csi_wasm.formats.manifest import Descriptor, ImageManifest

_CONTENT = frozenset({mediatypes.MODULE_WASM_CONTENT_V1})


def _pick(manifest: ImageManifest) -> Descriptor | None:
    return only_layer_of(manifest, _CONTENT, "Solo Wasm image (oci variant)")


SOLO_OCI = Format(
    name="solo-oci",
    accepted=f"Solo/wasme oci variant (layer {mediatypes.MODULE_WASM_CONTENT_V1})",
    pick=_pick,
    unpack=Unpack.RAW,
)
