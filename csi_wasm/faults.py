"""Filesystem faults of the node, named: which ``OSError`` is the disk's, and what it means.

The driver keeps everything under ``--root``. When that filesystem turns read-only,
fills up, loses permissions, fails with I/O errors or the process runs out of file
descriptors, the error is the node's, not a bug: kubelet should retry (the node may be
repaired) and the user should read what is wrong and where. :func:`disk_fault` turns
such an ``OSError`` into the error of the contract (CONTRACT.md section 4):

    ENOSPC, EDQUOT                         RESOURCE_EXHAUSTED   the disk (or quota) is full
    EROFS, EACCES, EPERM, EIO,             UNAVAILABLE          the root is unusable for now
    EMFILE, ENFILE

with a one-line message that names the path. Every other ``OSError`` stays what it
is (a bug: INTERNAL). The translation happens at the few boundaries where work on
the root is handed to a caller: the node service's RPCs, the puller, the collector's
loop and the command line; :func:`naming` attaches the path to errors of calls that
only see a file descriptor (write, fsync), so the message can name it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator

from csi_wasm.errors import CsiWasmError, ResourceExhausted, Unavailable

# errno -> what to do about it (the message's second half).
_FULL = {
    errno.ENOSPC: "the disk is full: free space there or lower --cache-max-bytes",
    errno.EDQUOT: "the disk quota is used up: raise it or lower --cache-max-bytes",
}
_UNUSABLE = {
    errno.EROFS: "make the driver's --root writable again (remount it read-write)",
    errno.EACCES: "check the owner, mode and security labels of the path",
    errno.EPERM: "check the owner, mode, attributes and security labels of the path "
    "and the driver's privileges",
    errno.EIO: "the disk reports I/O errors: check the node's disk (dmesg) and repair it",
    errno.EMFILE: "the driver ran out of file descriptors: raise its open-file limit "
    "(ulimit -n, LimitNOFILE)",
    errno.ENFILE: "the node ran out of file descriptors: raise fs.file-max or find the leak",
}
FAULT_ERRNOS = frozenset(_FULL) | frozenset(_UNUSABLE)


def disk_fault(error: BaseException) -> CsiWasmError | None:
    """The contract's error for a filesystem fault; None when ``error`` is not one."""
    if not isinstance(error, OSError) or error.errno not in FAULT_ERRNOS:
        return None
    kind = ResourceExhausted if error.errno in _FULL else Unavailable
    return kind(f"{explain(error)}; kubelet retries")


def explain(error: OSError) -> str:
    """One line for any ``OSError``: the path, what the system said, and for a fault what to do."""
    advice = _FULL.get(error.errno or 0) or _UNUSABLE.get(error.errno or 0)
    return f"{describe(error)}; {advice}" if advice else describe(error)


def describe(error: OSError) -> str:
    """``path: what the system said``, in one line, for any ``OSError``."""
    reason = error.strerror or str(error)
    if error.filename is None:
        return reason  # our own OSErrors (e.g. a mount's) carry the path in their text
    where = os.fsdecode(error.filename) if not isinstance(error.filename, int) else "a file"
    if error.filename2 is not None:
        where += f" -> {os.fsdecode(error.filename2)}"
    return f"{where}: {reason}"


@contextlib.contextmanager
def disk_faults() -> Iterator[None]:
    """Raise a filesystem fault in the block as the contract's error (the ``OSError`` as cause)."""
    try:
        yield
    except OSError as error:
        fault = disk_fault(error)
        if fault is None:
            raise
        raise fault from error


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Attach ``path`` to a filesystem fault in the block that names no file (write, fsync)."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno in FAULT_ERRNOS:
            error.filename = os.fspath(path)
        raise


class FaultLog:
    """How a background loop logs its runs: a filesystem fault once while it lasts, then its end.

    A root gone read-only fails every run the same way; a traceback per run would bury
    the one line that matters. A run that fails for any other reason is a bug: logged
    with its traceback, every time.
    """

    def __init__(self, logger: logging.Logger, work: str) -> None:
        self._log = logger
        self._work = work  # what the loop does, e.g. "garbage collection"
        self._fault: int | None = None  # errno of the fault the last run met

    def failed(self, error: BaseException) -> None:
        if not isinstance(error, OSError) or disk_fault(error) is None:
            self._log.error("%s failed; will try again", self._work, exc_info=error)
            return
        if error.errno != self._fault:
            self._log.warning(
                f"{self._work} failed; will try again", extra={"fields": {"error": explain(error)}}
            )
            self._fault = error.errno

    def succeeded(self) -> None:
        if self._fault is not None:
            self._log.info(f"{self._work} works again")
            self._fault = None
