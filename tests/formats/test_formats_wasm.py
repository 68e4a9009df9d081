"""Tests of csi_wasm.formats.wasm.check_wasm_header."""

from __future__ import annotations

import pytest
from support.wasm import make_module

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats import check_wasm_header
from csi_wasm.formats.wasm import HEADER_SIZE, WASM_MAGIC, WASM_VERSION_1

WHERE = "ghcr.io/acme/f:v1"


def refused(header: bytes) -> str:
    with pytest.raises(FailedPrecondition) as info:
        check_wasm_header(header, WHERE)
    message = info.value.message
    assert WHERE in message
    assert "\n" not in message
    return message


def test_constants() -> None:
    assert WASM_MAGIC + WASM_VERSION_1 == b"\x00asm\x01\x00\x00\x00"
    assert HEADER_SIZE == 8


@pytest.mark.parametrize("size", [0, 100, 5000])
def test_real_modules_pass(size: int) -> None:
    module = make_module(size, f"hdr-{size}")
    check_wasm_header(module[:HEADER_SIZE], WHERE)
    check_wasm_header(module, WHERE)  # longer input: only the header is looked at


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"\0",
        b"\0as",
        b"\0ASM\x01\0\0\0",
        b"\x7fELF\x02\x01\x01\0",
        b"<html>\n",
        b"asm\0\x01\0\0\0",
    ],
)
def test_magic_is_required(header: bytes) -> None:
    message = refused(header)
    assert "not a WebAssembly module" in message
    assert "\\0asm" in message


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (b"\0asm\x02\0\0\0", "02000000"),
        (b"\0asm\x00\0\0\0", "00000000"),
        (b"\0asm\x0d\0\x01\0", "0d000100"),  # a component
        (b"\0asm\x01\0\0\x01", "01000001"),
    ],
)
def test_only_version_1_is_accepted(header: bytes, shown: str) -> None:
    message = refused(header)
    assert f"version {shown}" in message
    assert "components are not loadable" in message


@pytest.mark.parametrize("header", [b"\0asm", b"\0asm\x01", b"\0asm\x01\0\0"])
def test_short_input_is_refused(header: bytes) -> None:
    message = refused(header)
    assert "not a version 1 core module" in message
