"""What a packaging format is: a rule that finds the module's layer in a manifest."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from csi_wasm.formats.manifest import Descriptor, ImageManifest


class Unpack(enum.Enum):
    """How the module comes out of the layer blob."""

    RAW = "raw"  # the blob is the module
    TARBALL = "tarball"  # the blob is a (gzipped) tar holding plugin.wasm


@dataclass(frozen=True)
class Format:
    name: str
    accepted: str  # one line for "what is accepted" in error messages
    pick: Callable[[ImageManifest], Descriptor | None]  # None: not this format
    unpack: Unpack
