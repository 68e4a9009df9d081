"""Reading the node's verification files (--verify-key, --verify-policy) with a size cap."""

from __future__ import annotations

from pathlib import Path


def read_capped(path: Path, limit: int, what: str, error: type[ValueError]) -> bytes:
    """The bytes of ``path``; ``error`` naming it as ``what`` (e.g. "key file") when it
    cannot be read or holds more than ``limit`` bytes (only ``limit + 1`` are read)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as problem:
        raise error(f"cannot read {what} {path}: {problem.strerror or problem}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    return data
