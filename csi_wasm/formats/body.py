"""The module in a body fetched from an https URL: raw Wasm, gzip'ed Wasm, or a tarball.

Istio accepts the same three shapes for http(s) module URLs; what comes out is always
the bytes of ``plugin.wasm``, checked for the Wasm header and bounded by the limit.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.tarball import (
    GZIP_MAGIC,
    BoundedReader,
    copy_module,
    extract_plugin,
    is_disk_full,
)
from csi_wasm.formats.wasm import WASM_MAGIC


def unpack_body(body: BinaryIO, out: BinaryIO, *, limit: int, where: str) -> tuple[str, int]:
    """Write the module held by ``body`` into ``out``; returns (sha256 hex, size)."""
    head = body.read(4)
    body.seek(0)
    if head == WASM_MAGIC:
        return copy_module(body, out, where)
    if head[:2] == GZIP_MAGIC and _gzip_holds_wasm(body):
        with gzip.GzipFile(fileobj=body) as inflated:
            try:
                return copy_module(BoundedReader(inflated, limit, where), out, where)
            except (OSError, EOFError, zlib.error) as error:
                if is_disk_full(error):
                    raise
                raise FailedPrecondition(f"{where} is a damaged gzip stream ({error})") from None
    return extract_plugin(body, out, limit=limit, where=where)


def _gzip_holds_wasm(body: BinaryIO) -> bool:
    try:
        with gzip.GzipFile(fileobj=body) as inflated:
            return inflated.read(4) == WASM_MAGIC
    except (OSError, EOFError, zlib.error):
        return False  # extract_plugin reports the damage
    finally:
        body.seek(0)
