"""The catalog directory a pod mounts: ``<name>.wasm`` and ``sha256/<hex>.wasm``.

Every file is a hard link of a cached module (``modules/<hex>/plugin.wasm``): one
copy on disk and in the page cache, mode 0444 like the module itself. A name moves to
another module by linking the new module under a ``.``-prefixed temporary name and
renaming it over ``<name>.wasm``: rename(2) replaces the directory entry atomically,
so a reader opening the file gets the old module or the new one, whole, never ENOENT.
``sha256/<hex>.wasm`` is linked before any name shows that module, so a digest read
from a name is always found there too.

Nothing else lives in the directory (temporary names start with ``.``). The files
are never written through, so nothing here needs an fsync: after a power loss the
catalog repairs itself from the module store (:meth:`CatalogDirectory.link_name`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from csi_wasm.attributes import NODE_CATALOG
from csi_wasm.cache.store import is_sha256_hex

SUFFIX = ".wasm"


def catalog_dir(root: Path, catalog: str = NODE_CATALOG) -> Path:
    """Where a catalog lives under ``--root``."""
    return root / "catalog" / catalog


class CatalogDirectory:
    """The files of one catalog; methods are not thread-safe (the catalog serialises)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_digest = path / "sha256"

    def prepare(self) -> None:
        """Create the layout and drop temporary links an interrupted swap left behind."""
        self.by_digest.mkdir(parents=True, exist_ok=True)
        for directory in (self.path, self.by_digest):
            os.chmod(directory, 0o755)  # noqa: S103 - every pod mounting it reads it
            for name in os.listdir(directory):
                if name.startswith("."):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(directory / name)

    def name_path(self, name: str) -> Path:
        return self.path / f"{name}{SUFFIX}"

    def digest_path(self, module_hex: str) -> Path:
        return self.by_digest / f"{module_hex}{SUFFIX}"

    def link_digest(self, module_hex: str, module_file: Path) -> None:
        """Make ``sha256/<hex>.wasm`` show ``module_file``.

        A file already there with the same bytes but another inode (the module was
        pulled again after an eviction) is replaced, so one copy is kept.
        """
        target = self.digest_path(module_hex)
        if not _same_file(target, module_file):
            self._swap_in(module_file, target)

    def link_name(self, name: str, module_file: Path) -> bool:
        """Make ``<name>.wasm`` show ``module_file``, atomically; False if it already did."""
        target = self.name_path(name)
        if _same_file(target, module_file):
            return False
        self._swap_in(module_file, target)
        return True

    def shows(self, name: str, module_hex: str) -> bool:
        """True when ``<name>.wasm`` is the file ``sha256/<hex>.wasm`` is."""
        return _same_file(self.name_path(name), self.digest_path(module_hex))

    def unlink_name(self, name: str) -> None:
        self.name_path(name).unlink(missing_ok=True)

    def unlink_digest(self, module_hex: str) -> None:
        self.digest_path(module_hex).unlink(missing_ok=True)

    def names(self) -> set[str]:
        """Entry names that have a file now."""
        try:
            listed = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {
            name[: -len(SUFFIX)]
            for name in listed
            if name.endswith(SUFFIX) and not name.startswith(".")
        }

    def digests(self) -> set[str]:
        """Module digests (hex) under ``sha256/`` now."""
        return set(held_digests(self.path))

    def _swap_in(self, module_file: Path, target: Path) -> None:
        temp = target.parent / f".{target.name}.{secrets.token_hex(4)}"
        os.link(module_file, temp)
        try:
            os.rename(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise


def held_digests(path: Path) -> Iterable[str]:
    """The module digests a catalog at ``path`` holds (read from disk: any process may ask).

    Garbage collection reads this, in ``serve`` and in ``csi-wasm gc`` alike, so it
    never evicts a module the catalog shows.
    """
    try:
        listed = os.listdir(path / "sha256")
    except FileNotFoundError:
        return []
    return [
        name[: -len(SUFFIX)]
        for name in listed
        if name.endswith(SUFFIX) and is_sha256_hex(name[: -len(SUFFIX)])
    ]


def take_out(path: Path, module_hex: str, module_file: Path) -> list[str]:
    """Remove every catalog file that is ``module_file`` (fsck quarantined it).

    Returns the file names removed. Comparing inodes finds every name that shows the
    damaged module, whatever the catalog's state says.
    """
    removed = []
    directory = CatalogDirectory(path)
    candidates = [directory.digest_path(module_hex)]
    with contextlib.suppress(FileNotFoundError):
        candidates += [path / name for name in os.listdir(path) if name.endswith(SUFFIX)]
    for candidate in candidates:
        if _same_file(candidate, module_file):
            candidate.unlink(missing_ok=True)
            removed.append(os.fspath(candidate.relative_to(path)))
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (FileNotFoundError, NotADirectoryError):
        return False
