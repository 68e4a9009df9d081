"""The content-addressed module cache under ``--root``.

Layout (everything the driver owns lives below the root)::

    modules/<sha256 hex>/plugin.wasm   a verified module, 0444, in a 0755 directory
    index/manifests/<sha256 hex>       manifest digest -> module digest
    index/refs/<sha256 of ref>         tag reference -> manifest digest (serves IfNotPresent)
    tmp/                               downloads in progress; emptied at start-up

A module directory is assembled in ``tmp/`` and renamed into ``modules/`` only after
its bytes were hashed, so a half-written or unverified module is never visible under
a digest. The index entries are single small files written atomically, so readers
need no lock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from csi_wasm.atomic import fsync_dir, write_atomic
from csi_wasm.errors import ResourceExhausted

MODULE_FILE = "plugin.wasm"
_HEX_DIGITS = frozenset("0123456789abcdef")


def is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and set(value) <= _HEX_DIGITS


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ModuleStore:
    """Verified modules by digest, plus the index that maps references to them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules_dir = root / "modules"
        self.manifests_dir = root / "index" / "manifests"
        self.refs_dir = root / "index" / "refs"
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create the layout and drop leftovers of interrupted pulls."""
        for directory in (self.modules_dir, self.manifests_dir, self.refs_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def usable(self) -> bool:
        """True when the cache directory exists and can be written (Probe's readiness)."""
        return os.access(self.tmp_dir, os.W_OK | os.X_OK) and self.modules_dir.is_dir()

    # modules

    def module_dir(self, module_hex: str) -> Path:
        return self.modules_dir / module_hex

    def has_module(self, module_hex: str) -> bool:
        return (self.modules_dir / module_hex / MODULE_FILE).is_file()

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, int]]:
        """A fresh file under ``tmp/``, removed on exit unless it was committed."""
        fd, name = tempfile.mkstemp(prefix="pull-", dir=self.tmp_dir)
        path = Path(name)
        try:
            yield path, fd
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            path.unlink(missing_ok=True)

    def commit_module(self, verified_file: Path, module_hex: str) -> Path:
        """Move a file whose sha256 is ``module_hex`` into the store; return its directory.

        The caller has hashed the bytes. If another pull committed the same digest
        first, ours is discarded: the content is identical by construction.
        """
        final = self.module_dir(module_hex)
        if self.has_module(module_hex):
            return final
        staging = Path(tempfile.mkdtemp(prefix="module-", dir=self.tmp_dir))
        try:
            target = staging / MODULE_FILE
            os.chmod(verified_file, 0o444)
            with open(verified_file, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(verified_file, target)
            os.chmod(staging, 0o755)  # noqa: S103 - every pod may read modules
            fsync_dir(staging)
            try:
                os.rename(staging, final)
            except OSError as error:
                if not self.has_module(module_hex):
                    raise storage_error(error) from error
            else:
                fsync_dir(self.modules_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

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


def _write_index(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as error:
        raise storage_error(error) from error


def storage_error(error: OSError) -> Exception:
    """A full disk becomes RESOURCE_EXHAUSTED (kubelet retries); anything else stays a bug."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(
            "the module cache disk is full; free space under --root or lower the cache size"
        )
    return error
