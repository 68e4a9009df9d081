"""``csi-wasm fsck``: re-hash and re-validate every cached module; quarantine the bad.

A module is stored under the sha256 of its bytes, so checking it needs nothing but
the file. One that does not hash to its name (bit rot, someone writing under
``--root``), whose ``plugin.wasm`` is missing or not a regular file, or that is not a
valid WebAssembly module (cached by a version that only checked its header), is renamed
into ``<root>/quarantine/``: it disappears from the cache at once (the index entries
leading to it are dropped, and the next publish pulls the module again, and refuses an
invalid one before caching it), while a pod
that already mounts it keeps the mount it has (a rename does not touch a bind mount).
The collector deletes a quarantined module once no mount shows it. The facts of every
sound module are written again (:mod:`csi_wasm.cache.kept_facts`), by this validator.

Safe beside a running ``serve``, and out of its way: the hashing (seconds per GiB)
runs without ``<root>/.lock``, so the collector, and with it a cold publish that must
make room, goes on meanwhile. Only the quarantine takes the lock, after checking that
the file is still the one that was hashed: a module evicted meanwhile is skipped, one
pulled again meanwhile (a new file) is checked again.
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
from csi_wasm.verify import ModuleFacts, facts_of

_CHUNK = 1024 * 1024
_ATTEMPTS = 3  # checks of a module replaced while it was being checked


@dataclass(frozen=True)
class Damaged:
    digest: str  # the name it was stored under (sha256 hex)
    problem: str  # what is wrong, for people
    moved_to: Path | None  # None: left in place (see ``left``)
    left: str = "it vanished meanwhile"  # why it was not moved, when it was not
    catalog_removed: tuple[str, ...] = ()  # catalog files that showed it, taken out


@dataclass(frozen=True)
class FsckReport:
    checked: int
    checked_bytes: int
    damaged: tuple[Damaged, ...]
    index_pruned: int


# What identifies the files checked: (directory's device, inode) and plugin.wasm's
# (device, inode, size, mtime, ctime), or None when it could not be opened.
_Identity = tuple[tuple[int, int], tuple[int, ...] | None]


@dataclass(frozen=True)
class _Verdict:
    problem: str | None  # None: it matches its digest and validates
    size: int  # bytes read
    identity: _Identity | None  # None: the module directory is gone
    facts: ModuleFacts | None = None  # when it matches its digest


def check_store(
    store: ModuleStore, *, hashing: Callable[[str], object] = lambda _name: None
) -> FsckReport:
    """Hash every module; quarantine the damaged ones and drop their index entries.

    ``hashing(digest)`` is called when a module's file is open, before it is read (a
    seam for tests).
    """
    damaged = []
    checked = checked_bytes = 0
    with os.scandir(store.modules_dir) as entries:
        names = sorted(entry.name for entry in entries if is_sha256_hex(entry.name))
    for name in names:
        verdict, damage = _check_module(store, name, hashing)
        if verdict.identity is None:
            continue  # evicted before it was read
        checked += 1
        checked_bytes += verdict.size
        if damage is not None:
            damaged.append(damage)
    pruned = store.prune_index() if any(d.moved_to for d in damaged) else 0
    return FsckReport(checked, checked_bytes, tuple(damaged), pruned)


_REPLACED = "it kept being replaced while it was checked; left in place, run fsck again"


def _check_module(
    store: ModuleStore, name: str, hashing: Callable[[str], object]
) -> tuple[_Verdict, Damaged | None]:
    """Check one module without the lock; quarantine it under the lock if damaged.

    Only the very files that were hashed are moved: a module pulled again meanwhile (a
    new, verified file) is checked again instead.
    """
    path = store.module_dir(name) / MODULE_FILE
    problem = ""
    for _ in range(_ATTEMPTS):
        verdict = _check(path, name, hashing)
        if verdict.problem is None and verdict.facts is not None:
            store.facts.record(name, verdict.facts)
        if verdict.problem is None or verdict.identity is None:
            return verdict, None
        problem = verdict.problem
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
        with store.exclusive():  # no collector moves modules meanwhile
            now = _identity(path)
            if now is None:
                return verdict, Damaged(name, problem, None)
            if now == verdict.identity:
                return verdict, _quarantined(store, name, problem, stamp)
    return verdict, Damaged(name, problem, None, _REPLACED)


def _quarantined(store: ModuleStore, name: str, problem: str, stamp: str) -> Damaged:
    moved = store.quarantine(name, stamp)
    if moved is None:
        return Damaged(name, problem, None)
    # The catalog's files are hard links of the module: the same damaged bytes.
    removed = take_out(catalog_dir(store.root), name, moved / MODULE_FILE)
    return Damaged(name, problem, moved, catalog_removed=tuple(removed))


def _identity(path: Path, opened: os.stat_result | None = None) -> _Identity | None:
    try:
        directory = os.lstat(path.parent)
    except FileNotFoundError:
        return None
    try:
        info = opened or os.lstat(path)
    except FileNotFoundError:
        return (directory.st_dev, directory.st_ino), None
    file = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return (directory.st_dev, directory.st_ino), file


def _check(path: Path, name: str, hashing: Callable[[str], object]) -> _Verdict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _Verdict(f"{MODULE_FILE} is missing", 0, _identity(path))
    except OSError as error:
        return _Verdict(f"{MODULE_FILE} cannot be opened ({error.strerror})", 0, _identity(path))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        identity = _identity(path, info)
        if not stat.S_ISREG(info.st_mode):
            return _Verdict(f"{MODULE_FILE} is not a regular file", 0, identity)
        hashing(name)
        digest = hashlib.sha256()
        data = bytearray()  # validated whole, like a pulled module
        try:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                data += chunk
        except OSError as error:
            problem = f"{MODULE_FILE} cannot be read ({error.strerror})"
            return _Verdict(problem, info.st_size, identity)
    actual = digest.hexdigest()
    if actual != name:
        return _Verdict(f"its content hashes to sha256:{actual}", info.st_size, identity)
    return _validated(data, info.st_size, identity)


def _validated(data: bytearray, size: int, identity: _Identity | None) -> _Verdict:
    """The verdict on a module that matches its digest: does it validate?"""
    facts = facts_of(data)
    if facts.structure_error is not None:
        problem = f"it is not a valid WebAssembly module: {facts.structure_error}"
        return _Verdict(problem, size, identity, facts)
    return _Verdict(None, size, identity, facts)


def fsck_command(root: Path, out: Callable[[str], None] = print) -> int:
    """Exit status: 0 all modules match, 1 something was quarantined, 2 no cache at ``root``."""
    store = ModuleStore(root)
    if not store.modules_dir.is_dir():
        out(f"csi-wasm: {root} holds no module cache (check --root)")
        return 2
    report = check_store(store)
    for damaged in report.damaged:
        where = f"moved to {damaged.moved_to}" if damaged.moved_to else damaged.left
        out(f"damaged sha256:{damaged.digest}: {damaged.problem}; {where}")
        for removed in damaged.catalog_removed:
            out(f"  taken out of the node catalog: {removed}")
    summary = f"checked {report.checked} module(s), {report.checked_bytes} bytes: "
    if not report.damaged:
        out(summary + "every module matches its digest and validates")
        return 0
    out(
        summary + f"{len(report.damaged)} damaged or invalid, removed from the cache "
        f"({report.index_pruned} index entries dropped); the next publish pulls them again"
    )
    return 1
