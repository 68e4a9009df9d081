"""``csi-wasm fsck``: re-hash every cached module; quarantine any that no longer match.

A module is stored under the sha256 of its bytes, so checking it needs nothing but
the file. One that does not hash to its name (bit rot, someone writing under
``--root``), or whose ``plugin.wasm`` is missing or not a regular file, is renamed
into ``<root>/quarantine/``: it disappears from the cache at once (the index entries
leading to it are dropped, and the next publish pulls the module again), while a pod
that already mounts it keeps the mount it has (a rename does not touch a bind mount).
The collector deletes a quarantined module once no mount shows it.

Safe beside a running ``serve``: it holds ``<root>/.lock`` like the collector.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from csi_wasm.cache.store import MODULE_FILE, ModuleStore, is_sha256_hex
from csi_wasm.catalog.directory import catalog_dir, take_out

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Damaged:
    digest: str  # the name it was stored under (sha256 hex)
    problem: str  # what is wrong, for people
    moved_to: Path | None  # None: it vanished while being checked
    catalog_removed: tuple[str, ...] = ()  # catalog files that showed it, taken out


@dataclass(frozen=True)
class FsckReport:
    checked: int
    checked_bytes: int
    damaged: tuple[Damaged, ...]
    index_pruned: int


def check_store(store: ModuleStore) -> FsckReport:
    """Hash every module; quarantine the damaged ones and drop their index entries."""
    damaged = []
    checked = checked_bytes = 0
    with store.exclusive():
        with os.scandir(store.modules_dir) as entries:
            names = sorted(entry.name for entry in entries if is_sha256_hex(entry.name))
        for name in names:
            problem, size = _check(store.module_dir(name) / MODULE_FILE, name)
            if problem == _GONE:
                continue  # evicted meanwhile (the lock keeps our collectors out; a human?)
            checked += 1
            checked_bytes += size
            if problem is None:
                continue
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
            moved = store.quarantine(name, stamp)
            # The catalog's files are hard links of the module: the same damaged bytes.
            removed = take_out(catalog_dir(store.root), name, moved / MODULE_FILE) if moved else []
            damaged.append(Damaged(name, problem, moved, tuple(removed)))
        pruned = store.prune_index() if damaged else 0
    return FsckReport(checked, checked_bytes, tuple(damaged), pruned)


_GONE = "gone"


def _check(path: Path, name: str) -> tuple[str | None, int]:
    """(what is wrong or None, bytes read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return (_GONE if not path.parent.exists() else f"{MODULE_FILE} is missing"), 0
    except OSError as error:
        return f"{MODULE_FILE} cannot be opened ({error.strerror})", 0
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return f"{MODULE_FILE} is not a regular file", 0
        digest = hashlib.sha256()
        try:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        except OSError as error:
            return f"{MODULE_FILE} cannot be read ({error.strerror})", info.st_size
    actual = digest.hexdigest()
    if actual != name:
        return f"its content hashes to sha256:{actual}", info.st_size
    return None, info.st_size


def fsck_command(root: Path, out: Callable[[str], None] = print) -> int:
    """Exit status: 0 all modules match, 1 something was quarantined, 2 no cache at ``root``."""
    store = ModuleStore(root)
    if not store.modules_dir.is_dir():
        out(f"csi-wasm: {root} holds no module cache (check --root)")
        return 2
    report = check_store(store)
    for damaged in report.damaged:
        where = f"moved to {damaged.moved_to}" if damaged.moved_to else "it vanished meanwhile"
        out(f"damaged sha256:{damaged.digest}: {damaged.problem}; {where}")
        for removed in damaged.catalog_removed:
            out(f"  taken out of the node catalog: {removed}")
    summary = f"checked {report.checked} module(s), {report.checked_bytes} bytes: "
    if not report.damaged:
        out(summary + "every module matches its digest")
        return 0
    out(
        summary + f"{len(report.damaged)} damaged, removed from the cache "
        f"({report.index_pruned} index entries dropped); the next publish pulls them again"
    )
    return 1
