"""What makes bytes a WebAssembly module Envoy can load."""

from __future__ import annotations

from csi_wasm.errors import FailedPrecondition

WASM_MAGIC = b"\0asm"
WASM_VERSION_1 = b"\x01\x00\x00\x00"
HEADER_SIZE = 8


def check_wasm_header(header: bytes, where: str) -> None:
    """Refuse anything that is not a core Wasm module (magic + version 1)."""
    if header[:4] != WASM_MAGIC:
        raise FailedPrecondition(
            f"{where} is not a WebAssembly module (no \\0asm magic); "
            "check that the url points at a Wasm plugin"
        )
    if header[4:HEADER_SIZE] != WASM_VERSION_1:
        raise FailedPrecondition(
            f"{where} is a WebAssembly binary of version {header[4:HEADER_SIZE].hex()}, "
            "not a version 1 core module (components are not loadable by Envoy)"
        )
