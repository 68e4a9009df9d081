"""Istio's compat images: a Docker or OCI image whose last layer is a tarball with plugin.wasm."""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, Unpack
from csi_wasm.formats.manifest import Descriptor, ImageManifest

TAR_LAYERS = frozenset(
    {mediatypes.DOCKER_LAYER_TAR_GZIP, mediatypes.OCI_LAYER_TAR_GZIP, mediatypes.OCI_LAYER_TAR}
)


def _pick(manifest: ImageManifest) -> Descriptor | None:
    if not manifest.layers or manifest.layers[-1].media_type not in TAR_LAYERS:
        return None
    return manifest.layers[-1]


COMPAT_IMAGE = Format(
    name="compat-image",
    accepted="Istio compat image (Docker or OCI image, last layer a tar+gzip with plugin.wasm)",
    pick=_pick,
    unpack=Unpack.TARBALL,
)
