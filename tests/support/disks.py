"""Real small filesystems for fault tests: a tmpfs a test makes read-only or full, then repairs."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FILLER = ".filler"


@dataclass
class Tmpfs:
    """A tmpfs mounted at ``path`` (see :func:`tmpfs`)."""

    path: Path

    def _remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def read_only(self) -> None:
        self._remount("ro")

    def writable(self) -> None:
        self._remount("rw")

    def fill(self) -> None:
        """Write a file until the filesystem is full (ENOSPC)."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\xaa" * 65536)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def empty(self) -> None:
        (self.path / FILLER).unlink()


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Tmpfs]:
    """Mount a ``size`` tmpfs at ``path`` (made if missing); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
