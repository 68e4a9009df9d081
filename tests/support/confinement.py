"""Tests read nothing beside the repository: a clone in any directory passes its own tests.

A development checkout may sit next to other directories (in ours, a sibling holds the
contract and test data). A test that reads one of them passes here and fails
on a fresh clone. :class:`SiblingReads` is an audit hook (:func:`sys.addaudithook`)
that notes every file opened, directory listed or process started with a path in the
repository's parent directory but outside the repository; ``tests/conftest.py``
installs it for the whole session and fails a test that did so.

Paths under the temporary directory and the Python installation are always allowed,
so a clone in ``/tmp/x`` still works; a repository at ``/`` has no siblings to guard.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PATH_EVENTS = frozenset({"open", "os.listdir", "os.scandir", "glob.glob", "shutil.copyfile"})


def _is_within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class SiblingReads:
    """Collects paths beside ``repo`` (in its parent, outside it and ``allowed``)."""

    def __init__(self, repo: Path = REPO, allowed: Iterable[str] | None = None) -> None:
        self._repo = os.fspath(repo)
        self._parent = os.fspath(repo.parent)
        if allowed is None:
            allowed = (tempfile.gettempdir(), sys.prefix, sys.base_prefix)
        self._allowed = [self._repo, *allowed]
        # The parent itself inside an allowed place (a clone in /tmp/x): nothing to guard.
        self._active = self._parent != "/" and not any(
            _is_within(self._parent, place) for place in self._allowed
        )
        self._lock = threading.Lock()
        self._seen: list[str] = []

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if not self._active:
            return
        if event in _PATH_EVENTS:
            self._check(args[0] if args else None, always_a_path=True)
        elif event == "subprocess.Popen":
            _executable, argv, cwd, _env = args
            self._check(cwd, always_a_path=True)
            words = argv if isinstance(argv, Sequence) and not isinstance(argv, str) else [argv]
            for word in words:
                self._check(word, always_a_path=False)

    def _check(self, value: object, *, always_a_path: bool) -> None:
        if isinstance(value, bytes):
            value = os.fsdecode(value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            return  # a file descriptor, or nothing
        # A flag such as --file=PATH names a path too.
        candidate = value.split("=", 1)[1] if value.startswith("-") and "=" in value else value
        if not (always_a_path or candidate.startswith(("/", "../"))):
            return  # a command's word that does not look like a path
        path = os.path.normpath(os.path.join(os.getcwd(), candidate))
        if _is_within(path, self._parent) and not any(
            _is_within(path, place) for place in self._allowed
        ):
            with self._lock:
                self._seen.append(path)

    @property
    def active(self) -> bool:
        return self._active

    def take(self) -> list[str]:
        """The paths noted since the last call."""
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


# The one the test session installs (tests/conftest.py).
SESSION_GUARD = SiblingReads()
