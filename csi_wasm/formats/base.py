"""What a packaging format is: a rule that finds the module's layer in a manifest."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.manifest import Descriptor, ImageManifest


class Unpack(enum.Enum):
    """How the module comes out of the layer blob.

    RAW      the blob is the module.
    TARBALL  the blob is a tar or tar+gzip holding a regular file ``plugin.wasm``.
    SNIFF    not known from the manifest: the blob's first bytes decide, after download
             (:func:`csi_wasm.formats.sniff.sniff_unpack`): the Wasm magic ``\\0asm``
             means RAW, gzip or tar magic means TARBALL, anything else is refused.
    """

    RAW = "raw"
    TARBALL = "tarball"
    SNIFF = "sniff"


class PackageError(FailedPrecondition):
    """A ``pick`` rule recognised its package but found it unusable.

    :func:`csi_wasm.formats.select_format` re-raises it as FAILED_PRECONDITION that
    names the reference; the message here says only what is wrong with the package.
    """


@dataclass(frozen=True)
class Format:
    name: str
    accepted: str  # one line for "what is accepted" in error messages
    pick: Callable[[ImageManifest], Descriptor | None]  # None: not this format
    unpack: Unpack


def only_layer_of(
    manifest: ImageManifest, media_types: Collection[str], package: str
) -> Descriptor | None:
    """The one layer whose media type is in ``media_types``; None if there is none.

    More than one such layer is ambiguous: PackageError, naming ``package``.
    """
    found = [layer for layer in manifest.layers if layer.media_type in media_types]
    if not found:
        return None
    if len(found) > 1:
        kinds = " or ".join(sorted(media_types))
        raise PackageError(
            f"{package} has {len(found)} layers of type {kinds}; exactly one is required"
        )
    return found[0]
