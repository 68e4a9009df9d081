"""``csi-wasm catalog``: what the node's catalog shows, read from the status file (no socket)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from csi_wasm.catalog.directory import catalog_dir
from csi_wasm.catalog.status import READY, read_status, status_path


def catalog_command(
    root: Path, *, as_json: bool = False, out: Callable[[str], None] = print
) -> int:
    """Exit status (CONTRACT §10): 0 when every entry is ready, 1 otherwise.

    No status file yet (serve never ran with this --root, or has not written it) is
    "not ready": 1, with a line saying where it looked.
    """
    path = status_path(catalog_dir(root))
    status = read_status(path)
    if status is None:
        out(f"csi-wasm: no catalog status at {path} (check --root; is serve running?)")
        return 1
    entries = [
        {
            "name": e.name,
            "url": e.url,
            "digest": e.digest,
            "state": e.state,
            "reason": e.reason,
            "since": e.since,
        }
        for e in status.entries
    ]
    if as_json:
        out(json.dumps({"entries": entries}, indent=2))
    elif not entries:
        out("the catalog lists no entries (give prefetch entries a name)")
    else:
        width = max(len(e["name"] or "") for e in entries)
        for entry in entries:
            digest = entry["digest"] or "-"
            line = f"{entry['name']:<{width}}  {entry['state']:<7}  {digest}"
            line += f"  since {entry['since']}  {entry['url']}"
            if entry["reason"]:
                line += f"\n{'':<{width}}  reason: {entry['reason']}"
            out(line)
    return 0 if all(e.state == READY for e in status.entries) else 1
