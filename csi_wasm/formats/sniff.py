"""Decide how to unpack a layer from its first bytes (for :attr:`Unpack.SNIFF` formats).

The caller downloads the layer (bounded and digest-checked as any other), reads its
first :data:`SNIFF_BYTES` bytes and asks :func:`sniff_unpack`, which answers RAW or
TARBALL, or refuses with FAILED_PRECONDITION naming what the layer starts with.
"""

from __future__ import annotations

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.base import Unpack
from csi_wasm.formats.manifest import Descriptor, shorten
from csi_wasm.formats.wasm import WASM_MAGIC

SNIFF_BYTES = 512  # one tar header block
_GZIP_MAGIC = b"\x1f\x8b"
_USTAR_AT = slice(257, 262)  # POSIX "ustar\0" and GNU "ustar  \0" both start so
_CHECKSUM_AT = slice(148, 156)
_KNOWN_MAGIC = (
    (b"\x28\xb5\x2f\xfd", "zstd data, which is not supported"),
    (b"BZh", "bzip2 data, which is not supported"),
    (b"\xfd7zXZ\x00", "xz data, which is not supported"),
    (b"\x7fELF", "an ELF executable"),
    (b"{", "JSON"),
    (b"<", "HTML or XML"),
)


def sniff_unpack(head: bytes, layer: Descriptor, where: str) -> Unpack:
    """RAW if ``head`` starts a Wasm binary, TARBALL if a gzip stream or a tar archive.

    Only the magic is looked at: a RAW answer still goes through ``check_wasm_header``
    (version 1 core module), and a TARBALL one through ``extract_plugin``.
    """
    if head.startswith(WASM_MAGIC):
        return Unpack.RAW
    if head.startswith(_GZIP_MAGIC) or _is_tar_header(head):
        return Unpack.TARBALL
    raise FailedPrecondition(
        f"{where}: its only layer ({shorten(layer.media_type)}) is neither a WebAssembly "
        f"module nor a tar archive: {_describe(head)}; accepted: a layer that is a Wasm "
        "module (\\0asm magic) or a tar/tar+gzip holding plugin.wasm"
    )


def _is_tar_header(head: bytes) -> bool:
    if len(head) < SNIFF_BYTES:
        return False
    block = head[:SNIFF_BYTES]
    if block[_USTAR_AT] == b"ustar":
        return True
    # A pre-POSIX (v7) header has no magic: its checksum is the only sign.
    field = block[_CHECKSUM_AT].replace(b"\0", b" ").strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
    return block[0] != 0 and stored == computed


def _describe(head: bytes) -> str:
    if not head:
        return "it is empty"
    for magic, kind in _KNOWN_MAGIC:
        if head.startswith(magic):
            return f"it starts with {head[:8].hex()} ({kind})"
    return f"it starts with {head[:8].hex()}"
