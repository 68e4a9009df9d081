"""Istio's compat images: a Docker or OCI image whose last layer is a tarball with plugin.wasm.

A container image is recognised by its config (Docker or OCI image config), as
docker, buildah, kaniko and crane write it. A single tar layer under any other config
is what ``oras push file`` makes of a file of any content; that is left to the
single-layer format, which looks at the bytes (a real tarball is still unpacked).
"""

from __future__ import annotations

from csi_wasm.formats import mediatypes
from csi_wasm.formats.base import Format, Unpack
from csi_wasm.formats.manifest import Descriptor, ImageManifest

TAR_LAYERS = frozenset(
    {mediatypes.DOCKER_LAYER_TAR_GZIP, mediatypes.OCI_LAYER_TAR_GZIP, mediatypes.OCI_LAYER_TAR}
)


def _pick(manifest: ImageManifest) -> Descriptor | None:
    if manifest.config.media_type not in mediatypes.IMAGE_CONFIGS:
        return None
    if not manifest.layers or manifest.layers[-1].media_type not in TAR_LAYERS:
        return None
    return manifest.layers[-1]


COMPAT_IMAGE = Format(
    name="compat-image",
    accepted="Istio compat image (Docker or OCI image, last layer a tar+gzip with plugin.wasm)",
    pick=_pick,
    unpack=Unpack.TARBALL,
)
