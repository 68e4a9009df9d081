"""The catalog's status, kept on disk so ``csi-wasm catalog`` needs no socket.

One JSON file next to the catalog directory (``<root>/catalog/<catalog>.json``),
replaced atomically on every change::

    {"entries": [{"name", "url", "digest", "state", "reason", "since"}],
     "retired": {"<hex>": <unix time it stopped being shown>}}

``digest`` is ``sha256:<hex>`` of the module ``<name>.wasm`` shows (null: none yet);
``state`` is ``ready``, ``pending`` or ``failed``; ``reason`` is set when failed;
``since`` (RFC 3339, UTC) is when the entry entered its state. ``retired`` lists the
modules kept under ``sha256/`` for the grace period after no name showed them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from csi_wasm.atomic import write_atomic
from csi_wasm.cache.store import is_sha256_hex

log = logging.getLogger(__name__)

READY = "ready"
PENDING = "pending"
FAILED = "failed"
STATES = (READY, PENDING, FAILED)


@dataclass(frozen=True)
class EntryStatus:
    name: str
    url: str
    digest: str | None  # sha256:<hex> served, or None
    state: str  # READY, PENDING or FAILED
    reason: str | None
    since: str  # RFC 3339

    @property
    def module_hex(self) -> str | None:
        return self.digest.removeprefix("sha256:") if self.digest else None


@dataclass(frozen=True)
class CatalogStatus:
    entries: tuple[EntryStatus, ...] = ()
    retired: Mapping[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [asdict(entry) for entry in self.entries],
            "retired": dict(self.retired or {}),
        }


def status_path(catalog_path: Path) -> Path:
    return catalog_path.parent / f"{catalog_path.name}.json"


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_status(path: Path, status: CatalogStatus) -> None:
    write_atomic(path, json.dumps(status.to_json(), indent=1).encode() + b"\n")


def read_status(path: Path) -> CatalogStatus | None:
    """The status last written; None when there is none (or it cannot be read: logged)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning(
            "catalog status unreadable; starting afresh",
            extra={"fields": {"path": str(path), "error": str(error)[:200]}},
        )
        return None
    if not isinstance(data, dict):
        return None
    entries = [_entry(item) for item in _list(data.get("entries"))]
    retired = data.get("retired")
    return CatalogStatus(
        tuple(entry for entry in entries if entry is not None),
        {
            key: float(value)
            for key, value in (retired.items() if isinstance(retired, dict) else [])
            if is_sha256_hex(key) and isinstance(value, int | float) and math.isfinite(value)
        },
    )


def _list(value: object) -> Sequence[object]:
    return value if isinstance(value, list) else []


def _entry(item: object) -> EntryStatus | None:
    if not isinstance(item, dict):
        return None
    fields = {key: item.get(key) for key in ("name", "url", "digest", "state", "reason", "since")}
    if not all(isinstance(fields[key], str) for key in ("name", "url", "state", "since")):
        return None
    if fields["state"] not in STATES:
        return None
    digest, reason = fields["digest"], fields["reason"]
    if digest is not None and not (
        isinstance(digest, str) and is_sha256_hex(digest.removeprefix("sha256:"))
    ):
        return None
    return EntryStatus(
        str(fields["name"]),
        str(fields["url"]),
        digest if isinstance(digest, str) else None,
        str(fields["state"]),
        reason if isinstance(reason, str) else None,
        str(fields["since"]),
    )
