"""Any single-layer artifact whose one layer turns out to be Wasm (or a plugin.wasm tarball).

This is what ``oras push ref plugin.wasm`` gives: config ``application/vnd.oci.empty.v1+json``
(oras 1.x) or ``application/vnd.unknown.config.v1+json`` (oras 0.x, oras-py), one layer
``application/vnd.oci.image.layer.v1.tar`` (or the type given after ``:``) titled with the
file name. The media type says nothing reliable here, so the bytes decide (SNIFF): the
Wasm magic makes the layer the module, tar or gzip magic makes it a compat tarball.

Container images (Docker or OCI image config) are not artifacts: they are compat images
or nothing, so this format leaves them alone. It is the last resort in FORMATS.
"""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, Unpack
from csi_wasm.formats.manifest import Descriptor, ImageManifest


def _pick(manifest: ImageManifest) -> Descriptor | None:
    if manifest.config.media_type in mediatypes.IMAGE_CONFIGS or len(manifest.layers) != 1:
        return None
    return manifest.layers[0]


SINGLE_LAYER = Format(
    name="single-layer",
    accepted="any artifact (not an image) with one layer that is a Wasm module, e.g. oras push",
    pick=_pick,
    unpack=Unpack.SNIFF,
)
