"""Take ``plugin.wasm`` out of a compat image layer without trusting the layer.

Only a regular file whose base name is ``plugin.wasm`` is taken; links are never
followed, nothing is written anywhere but the caller's file, and both the compressed
and the decompressed stream are bounded.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import posixpath
import tarfile
import zlib
from typing import BinaryIO

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.wasm import HEADER_SIZE, check_wasm_header

MODULE_NAME = "plugin.wasm"
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1024 * 1024
# Tar headers and padding around the module; other files in the layer count against it too.
_TAR_OVERHEAD = 1024 * 1024


class BoundedReader:
    """A read-only stream that refuses to yield more than ``limit`` bytes."""

    def __init__(self, inner: BinaryIO | gzip.GzipFile, limit: int, where: str) -> None:
        self._inner = inner
        self._left = limit
        self._limit = limit
        self._where = where

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        data = self._inner.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise FailedPrecondition(
                f"{self._where} unpacks to more than {self._limit} bytes; "
                "raise --max-module-bytes if the module really is that large"
            )
        return data


def extract_plugin(blob: BinaryIO, out: BinaryIO, *, limit: int, where: str) -> tuple[str, int]:
    """Copy ``plugin.wasm`` from a tar or tar+gzip stream into ``out``.

    Returns the module's sha256 hex and size. Raises FAILED_PRECONDITION for a layer
    without a usable ``plugin.wasm``, one that is too large, or one that is not Wasm.
    """
    head = blob.read(2)
    blob.seek(0)
    source: BinaryIO | gzip.GzipFile = gzip.GzipFile(fileobj=blob) if head == GZIP_MAGIC else blob
    stream = BoundedReader(source, limit + _TAR_OVERHEAD, where)
    links: list[str] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                if posixpath.basename(member.name.rstrip("/")) != MODULE_NAME:
                    continue
                _refuse_unsafe_name(member.name, where)
                if not member.isreg():
                    links.append(f"{member.name} ({_kind(member)})")
                    continue
                if member.size > limit:
                    raise FailedPrecondition(
                        f"{where} holds a {member.size}-byte plugin.wasm, over the "
                        f"{limit}-byte limit; raise --max-module-bytes if that is intended"
                    )
                handle = archive.extractfile(member)
                if handle is None:  # pragma: no cover - regular members always have data
                    break
                return copy_module(handle, out, where)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
        if is_disk_full(error):
            raise  # our disk, not the archive: the caller frees room or reports it
        raise FailedPrecondition(f"{where} is not a readable tar archive ({error})") from error
    if links:
        raise FailedPrecondition(
            f"{where} has no regular plugin.wasm: found {', '.join(links)}; links are not followed"
        )
    raise FailedPrecondition(f"{where} does not contain a file named plugin.wasm")


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _refuse_unsafe_name(name: str, where: str) -> None:
    if name.startswith("/") or ".." in name.split("/"):
        raise FailedPrecondition(f"{where} has an unsafe path {name!r} in its tar; refusing it")


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isdir():
        return "directory"
    return "special file"


def copy_module(handle: BinaryIO | BoundedReader, out: BinaryIO, where: str) -> tuple[str, int]:
    """Copy a module to ``out``, checking its Wasm header; returns (sha256 hex, size)."""
    digest = hashlib.sha256()
    size = 0
    header_checked = False
    while chunk := handle.read(_CHUNK):
        if not header_checked:
            check_wasm_header(chunk[:HEADER_SIZE], f"plugin.wasm in {where}")
            header_checked = True
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    if not header_checked:
        check_wasm_header(b"", f"plugin.wasm in {where}")
    return digest.hexdigest(), size
