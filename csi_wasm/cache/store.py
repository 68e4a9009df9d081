"""The content-addressed module cache under ``--root``.

Layout (everything the driver owns lives below the root)::

    modules/<sha256 hex>/plugin.wasm   a verified module, 0444, in a 0755 directory
    facts/<sha256 hex>.json            what validation found in it (:mod:`.kept_facts`)
    index/manifests/<sha256 hex>       manifest digest -> module digest
    index/refs/<sha256 of ref>         tag reference -> manifest digest (serves IfNotPresent)
    index/verdicts/<manifest>.<key>    a signature of the manifest verified with the key
                                       (sha256 of its SPKI) -> module digest
    tmp/                               downloads in progress; emptied at start-up
    trash/<hex>.<token>                modules being evicted (see :mod:`csi_wasm.cache.gc`)
    quarantine/<hex>.<time>            modules that failed ``csi-wasm fsck``
    .lock                              flock'ed by whoever evicts or quarantines modules
    gc.sock                            serve's: ``csi-wasm gc`` collects through it (pins)

A module directory is assembled in ``tmp/`` and renamed into ``modules/`` only after
its bytes were hashed, so a half-written or unverified module is never visible under
a digest. The index entries are single small files written atomically, so readers
need no lock.

Pins. A module is in use while a volume record names it or while it is *pinned* in
memory: a publish pins the module it picked until its volume record is written.
``lock`` guards the pins and every rename into or out of ``modules/``, so a pin
either finds the module and keeps it, or finds it already gone (a cache miss); the
collector picks its victims under the same lock; ``csi-wasm gc`` has a running driver
collect (:mod:`csi_wasm.cache.gc_requests`), so no other collector needs to see the
pins (fsck, in its own process, moves only damaged modules). A module directory's mtime is its
last use: pinning touches it (one utime, no fsync).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from csi_wasm.atomic import fsync_dir, remove, write_atomic
from csi_wasm.cache.kept_facts import KeptFacts
from csi_wasm.faults import disk_fault, naming

MODULE_FILE = "plugin.wasm"
_HEX_DIGITS = frozenset("0123456789abcdef")


def is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and set(value) <= _HEX_DIGITS


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CachedModule:
    """One module in the store, as the collector sees it."""

    digest: str  # sha256 hex
    size: int  # bytes of plugin.wasm
    disk_bytes: int  # bytes it occupies on disk (blocks)
    last_used: float  # unix time: the directory's mtime


class ModuleStore:
    """Verified modules by digest, plus the index that maps references to them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules_dir = root / "modules"
        self.manifests_dir = root / "index" / "manifests"
        self.refs_dir = root / "index" / "refs"
        self.verdicts_dir = root / "index" / "verdicts"
        self.tmp_dir = root / "tmp"
        self.trash_dir = root / "trash"
        self.quarantine_dir = root / "quarantine"
        self.lock_file = root / ".lock"
        self.facts = KeptFacts(root / "facts")
        # Plain strings for the warm publish path: pathlib joins cost more than the syscalls.
        self._modules_prefix = os.fspath(self.modules_dir) + "/"
        # Guards the pins and every rename into or out of modules/ (see the module doc).
        self.lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self._watch: set[str] | None = None
        # Verdict entries read or written, by file name: a warm publish under a signature
        # rule then reads no file. Still answered only while the module is stored.
        self._verdicts: dict[str, str] = {}

    def prepare(self) -> int:
        """Create the layout and drop leftovers of interrupted pulls; returns how many."""
        for directory in (self.modules_dir, self.manifests_dir, self.refs_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.facts.prepare()
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            removed += 1
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        return removed

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``<root>/.lock``: one collector or fsck at a time, across processes.

        The publish path never takes it; it only serialises the tools that move modules
        out of ``modules/`` (serve's collector, ``csi-wasm gc``, ``csi-wasm fsck``).
        """
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with naming(self.lock_file):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def usable(self) -> bool:
        """True while the cache can be written: the readiness of Probe and /readyz.

        Makes and removes an empty file in ``tmp/``: that fails on a read-only or
        unwritable root, on I/O errors and without a free file descriptor. A full disk
        still has room for an empty file, and cached modules still publish: ready.
        """
        if not self.modules_dir.is_dir():
            return False
        try:
            fd, name = tempfile.mkstemp(prefix="probe-", dir=self.tmp_dir)
            os.close(fd)
            os.unlink(name)
        except OSError:
            return False
        return True

    # modules

    def module_dir(self, module_hex: str) -> Path:
        return self.modules_dir / module_hex

    def has_module(self, module_hex: str) -> bool:
        return self._module_size(module_hex) is not None

    def _module_size(self, module_hex: str) -> int | None:
        """Bytes of the module's plugin.wasm; None when it is not stored."""
        try:
            info = os.stat(self._modules_prefix + module_hex + "/" + MODULE_FILE)
        except (OSError, ValueError):
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, int]]:
        """A fresh file under ``tmp/``, removed on exit unless it was committed.

        The descriptor belongs to this context: wrap it with ``closefd=False``. If the
        caller closed it all the same, it is not closed again: by then its number may
        name another thread's file.
        """
        fd, name = tempfile.mkstemp(prefix="pull-", dir=self.tmp_dir)
        path = Path(name)
        opened = os.fstat(fd)
        try:
            with naming(path):  # the writes and fsyncs in the block see only ``fd``
                yield path, fd
        finally:
            with contextlib.suppress(OSError):
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                    os.close(fd)
            path.unlink(missing_ok=True)

    def commit_module(self, verified_file: Path, module_hex: str, *, pin: bool = False) -> Path:
        """Move a file whose sha256 is ``module_hex`` into the store; return its directory.

        The caller has hashed the bytes. If another pull committed the same digest
        first, ours is discarded: the content is identical by construction. With
        ``pin``, the module is pinned in the same step (the caller unpins it), so no
        eviction can come between the commit and its first use.
        """
        final = self.module_dir(module_hex)
        already_stored = self.pin(module_hex) if pin else self.has_module(module_hex)
        if already_stored:
            return final
        staging = Path(tempfile.mkdtemp(prefix="module-", dir=self.tmp_dir))
        try:
            target = staging / MODULE_FILE
            os.chmod(verified_file, 0o444)
            with naming(verified_file), open(verified_file, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(verified_file, target)
            os.chmod(staging, 0o755)  # noqa: S103 - every pod may read modules
            fsync_dir(staging)
            renamed = False
            with self.lock:
                try:
                    os.rename(staging, final)
                    renamed = True
                except OSError as error:
                    if not self.has_module(module_hex):
                        raise storage_error(error) from error
                if pin:
                    self._pin_locked(module_hex)
            if renamed:
                fsync_dir(self.modules_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    # pins and last use

    def pin(self, module_hex: str) -> bool:
        """Keep ``module_hex`` from eviction until :meth:`unpin`; False if it is not stored."""
        return self.acquire(module_hex) is not None

    def acquire(self, module_hex: str) -> int | None:
        """:meth:`pin`, returning the module's size (None: not stored, nothing pinned)."""
        with self.lock:
            size = self._module_size(module_hex)
            if size is None:
                return None
            self._pin_locked(module_hex)
        self.touch(module_hex)
        return size

    def _pin_locked(self, module_hex: str) -> None:
        self._pins[module_hex] = self._pins.get(module_hex, 0) + 1
        if self._watch is not None:
            self._watch.add(module_hex)

    def unpin(self, module_hex: str) -> None:
        with self.lock:
            count = self._pins.get(module_hex, 0) - 1
            if count > 0:
                self._pins[module_hex] = count
            else:
                self._pins.pop(module_hex, None)

    def pinned(self) -> set[str]:
        with self.lock:
            return set(self._pins)

    def touch(self, module_hex: str) -> None:
        """Record a use of the module now (its directory's mtime); gone is fine."""
        with contextlib.suppress(OSError, ValueError):
            os.utime(self._modules_prefix + module_hex)

    def watch_pins(self) -> None:
        """Start remembering every digest pinned from now on (and the ones pinned now).

        The collector reads the volume records without holding ``lock``; a publish
        that pins, records and unpins meanwhile is caught here instead.
        """
        with self.lock:
            self._watch = set(self._pins)

    def stop_watching_locked(self) -> set[str]:
        """Digests pinned at any time since :meth:`watch_pins`; the caller holds ``lock``."""
        seen = (self._watch or set()) | set(self._pins)
        self._watch = None
        return seen

    def cached_modules(self) -> list[CachedModule]:
        """Every module in the store, with its size and last use (a racing eviction is skipped)."""
        found = []
        with os.scandir(self.modules_dir) as entries:
            for entry in entries:
                if not is_sha256_hex(entry.name):
                    continue
                try:
                    directory = entry.stat(follow_symlinks=False)
                    module = os.stat(os.path.join(entry.path, MODULE_FILE))
                except FileNotFoundError:
                    continue
                found.append(
                    CachedModule(
                        entry.name, module.st_size, module.st_blocks * 512, directory.st_mtime
                    )
                )
        return found

    def discard_locked(self, module_hex: str) -> Path | None:
        """Rename a module out of ``modules/`` into ``trash/``; the caller holds ``lock``.

        The rename makes it vanish atomically for lookups and pins. Its contents stay
        intact (a bind mount of the directory keeps working) until the caller deletes
        the returned path, or puts it back with :meth:`restore`.
        """
        self.trash_dir.mkdir(exist_ok=True)
        trash = self.trash_dir / f"{module_hex}.{secrets.token_hex(4)}"
        try:
            os.rename(self.module_dir(module_hex), trash)
        except FileNotFoundError:
            return None
        return trash

    def restore(self, moved: Path, module_hex: str) -> bool:
        """Put a module moved by :meth:`discard_locked` back, unless it was stored again."""
        with self.lock:
            if self.module_dir(module_hex).exists():
                return False
            try:
                os.rename(moved, self.module_dir(module_hex))
            except OSError:
                return False
        return True

    def quarantine(self, module_hex: str, stamp: str) -> Path | None:
        """Move a damaged module to ``quarantine/`` (bind mounts of it keep working)."""
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{module_hex}.{stamp}"
        with self.lock:
            try:
                os.rename(self.module_dir(module_hex), target)
            except FileNotFoundError:
                return None
        fsync_dir(self.modules_dir)
        return target

    def usage(self) -> tuple[int, int]:
        """(bytes, modules) held in the cache."""
        total = count = 0
        with os.scandir(self.modules_dir) as entries:
            for entry in entries:
                try:
                    total += os.stat(os.path.join(entry.path, MODULE_FILE)).st_size
                except FileNotFoundError:
                    continue
                count += 1
        return total, count

    # index

    def module_for_manifest(self, manifest_digest: str) -> str | None:
        """The module digest pulled from a manifest, if it is still in the store."""
        entry = self.manifests_dir / manifest_digest.removeprefix("sha256:")
        try:
            module_hex = entry.read_text().strip()
        except (FileNotFoundError, ValueError):
            return None  # gone, or not text: a damaged entry is a cache miss
        return module_hex if is_sha256_hex(module_hex) and self.has_module(module_hex) else None

    def record_manifest(self, manifest_digest: str, module_hex: str) -> None:
        entry = self.manifests_dir / manifest_digest.removeprefix("sha256:")
        _write_index(entry, module_hex.encode())

    def manifest_for_reference(self, reference: str) -> str | None:
        try:
            data = json.loads((self.refs_dir / _key(reference)).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("reference") != reference:
            return None
        digest = data.get("manifest")
        return digest if isinstance(digest, str) else None

    def record_reference(self, reference: str, manifest_digest: str) -> None:
        body = json.dumps({"reference": reference, "manifest": manifest_digest}).encode()
        _write_index(self.refs_dir / _key(reference), body)

    def has_verdict(self, manifest_digest: str, fingerprint: str) -> bool:
        """True if a signature of the manifest verified with this key, and its module is stored.

        A verdict goes with its module: once the module is evicted, the verdict reads as
        absent (and :meth:`prune_index` removes it), so a new pull verifies again.
        """
        name = f"{_hex(manifest_digest)}.{fingerprint}"
        module_hex = self._verdicts.get(name)
        if module_hex is None:
            try:
                module_hex = (self.verdicts_dir / name).read_text().strip()
            except (FileNotFoundError, ValueError):
                return False
            if not is_sha256_hex(module_hex):
                return False
        if not self.has_module(module_hex):
            self._verdicts.pop(name, None)  # evicted: from now on the file decides
            return False
        self._verdicts[name] = module_hex
        return True

    def record_verdict(self, manifest_digest: str, fingerprint: str, module_hex: str) -> None:
        """Keep a successful verification (failures are never kept: a retry looks again)."""
        self.verdicts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{_hex(manifest_digest)}.{fingerprint}"
        _write_index(self.verdicts_dir / name, module_hex.encode())
        self._verdicts[name] = module_hex

    def prune_index(self) -> int:
        """Drop index entries that lead to no stored module; returns how many.

        Such entries already read as cache misses; this keeps them from piling up.
        A manifest entry goes when its module is not stored (or it is damaged), a
        reference entry when its manifest entry is gone, a module's facts with it.
        """
        removed = self.facts.prune(self.has_module)
        removed += self._prune_module_pointers(self.manifests_dir)
        with os.scandir(self.refs_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    data = json.loads(Path(entry.path).read_bytes())
                except FileNotFoundError:
                    continue
                except (OSError, ValueError):
                    data = None
                manifest = data.get("manifest") if isinstance(data, dict) else None
                if not (
                    isinstance(manifest, str)
                    and is_sha256_hex(_hex(manifest))
                    and (self.manifests_dir / _hex(manifest)).is_file()
                ):
                    removed += remove(Path(entry.path), durable=False)
        removed += self._prune_verdicts()
        return removed

    def _prune_verdicts(self) -> int:
        with contextlib.suppress(FileNotFoundError):  # no verification kept yet
            return self._prune_module_pointers(self.verdicts_dir)
        return 0

    def _prune_module_pointers(self, directory: Path) -> int:
        """Remove the entries of ``directory`` (each a module's hex) that lead to no
        stored module; returns how many."""
        removed = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # a write in progress (write_atomic's temp file)
                try:
                    module_hex = Path(entry.path).read_text().strip()
                except FileNotFoundError:
                    continue
                except (OSError, ValueError):
                    module_hex = ""
                if not (is_sha256_hex(module_hex) and self.has_module(module_hex)):
                    removed += remove(Path(entry.path), durable=False)
        return removed


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _write_index(path: Path, data: bytes) -> None:
    # Not fsynced: an index entry is derived data, written after the module it names was
    # fsynced. Losing one to a power cut is a cache miss; keeping it durable cost four
    # of the seven fsyncs of a pull.
    try:
        write_atomic(path, data, durable=False)
    except OSError as error:
        raise storage_error(error) from error


def storage_error(error: OSError) -> Exception:
    """A filesystem fault as the contract's error (see csi_wasm.faults); others unchanged."""
    return disk_fault(error) or error
