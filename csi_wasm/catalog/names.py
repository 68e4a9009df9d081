"""Catalog entry names: a lowercase DNS label, so ``<name>.wasm`` is a safe file name."""

from __future__ import annotations

import re

MAX_NAME = 63
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SHOWN = 80


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a catalog entry (one line), or None when it can."""
    shown = repr(name[:_SHOWN])
    if len(name) > MAX_NAME:
        return f"name {shown} is {len(name)} characters long; at most {MAX_NAME}"
    if not _LABEL.fullmatch(name):
        return (
            f"name {shown} is not a lowercase DNS label: use a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return None
