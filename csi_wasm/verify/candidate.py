"""One signature found for a module, reduced to what any authority needs to judge it."""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

from csi_wasm.verify.keys import Material


class Layout(enum.Enum):
    """Where cosign keeps a signature (the ``layout`` label of the metric)."""

    SIMPLESIGNING = "simplesigning"  # cosign <= 2: tag sha256-<hex>.sig
    BUNDLE = "bundle"  # cosign >= 3: a sigstore bundle in a referrer


@dataclass(frozen=True)
class Candidate:
    """A signature over ``signed``; ``problem`` says why it cannot count even if genuine.

    ``problem`` is set when the signed statement is not about this module (it names
    another digest, or is not a cosign signature at all): a genuine signature of another
    module replayed under this one's tag must not pass.
    """

    layout: Layout
    signed: bytes = field(repr=False)  # the exact bytes the signature covers
    signature: bytes = field(repr=False)
    material: Material = field(default_factory=Material)
    problem: str | None = None


def decode_base64(text: str) -> bytes | None:
    """Standard base64, ignoring whitespace (cosign's annotations may wrap lines)."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
