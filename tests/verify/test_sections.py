"""Tests of csi_wasm.verify.sections: the import/export reader against wabt's assembler."""

from __future__ import annotations

import pytest
import wasmtime
from support.wasm import from_wat, make_module

from csi_wasm.verify.sections import Interface, MalformedModule, cut_short, read_interface


def test_reads_every_import_and_export_kind() -> None:
    module = from_wat(
        """
        (module
          (type $t (func (param i32)))
          (import "env" "log" (func (type $t)))
          (import "env" "table" (table 1 10 funcref))
          (import "env" "mem" (memory 1 2))
          (import "env" "g" (global (mut i64)))
          (import "env" "tag" (tag (param i32)))
          (import "env" "big" (memory i64 1))
          (func $f (export "f") (param i32))
          (global $h (export "h") i32 (i32.const 0))
          (table $t2 (export "t") 1 externref)
          (tag $e (export "e") (param i32)))
        """
    )
    assert read_interface(module) == Interface(
        imports=(
            ("env", "log", "func"),
            ("env", "table", "table"),
            ("env", "mem", "memory"),
            ("env", "g", "global"),
            ("env", "tag", "tag"),
            ("env", "big", "memory"),
        ),
        exports=(("f", "func"), ("h", "global"), ("t", "table"), ("e", "tag")),
    )


def test_reads_the_demo_shape_of_test_modules() -> None:
    interface = read_interface(make_module(70_000, "sections"))
    assert interface.imports == ()
    assert interface.exports == (
        ("seed", "func"),
        ("memory", "memory"),
        ("proxy_abi_version_0_2_1", "func"),
        ("malloc", "func"),
    )


def test_typed_function_references() -> None:
    # wabt 1.0.32 cannot write typed references; wasmtime's text parser (wasm-tools) can.
    module = wasmtime.wat2wasm(
        """
        (module
          (type $t (func))
          (import "env" "r" (global (ref null $t)))
          (import "env" "s" (table 1 (ref null func)))
          (import "env" "p" (memory 1 (pagesize 1)))
          (func (export "f") (param (ref $t))))
        """
    )
    assert read_interface(module) == Interface(
        (("env", "r", "global"), ("env", "s", "table"), ("env", "p", "memory")),
        (("f", "func"),),
    )


def test_unicode_names() -> None:
    module = from_wat('(module (import "ëñv" "ü" (func)) (func (export "größe")))')
    assert read_interface(module) == Interface((("ëñv", "ü", "func"),), (("größe", "func"),))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0asm\x02\0\0\0",
        make_module(300, "cut")[:60],  # a section runs past the end
        b"\0asm\x01\0\0\0\x07\x05\x01\x01a\x09\x00",  # unknown export kind 9
        b"\0asm\x01\0\0\0\x07\x03\x01\x05a",  # name runs past its section
        b"\0asm\x01\0\0\0\x07\x02\x01\xff",  # LEB128 runs past the section
        b"\0asm\x01\0\0\0\x02\x06\x01\x01a\x01b\x07",  # unknown import kind 7
        b"\0asm\x01\0\0\0\x07\x05\x00\x00\x00\x00\x00",  # trailing bytes in the section
        b"\0asm\x01\0\0\0\x07\x06\x01\x01\xff\x00\x00\x00",  # name not UTF-8
        b"\0asm\x01\0\0\0\x07\x07\xff\xff\xff\xff\xff\xff\x0f",  # count over 32 bits
    ],
)
def test_malformed_bytes_are_refused_with_malformed_module(data: bytes) -> None:
    with pytest.raises(MalformedModule):
        read_interface(data)


def test_other_sections_are_skipped_by_length() -> None:
    # A 1 MiB custom section before the exports is jumped over, not decoded.
    interface = read_interface(make_module(1 << 20, "skip"))
    assert ("seed", "func") in interface.exports


def test_cut_short_names_the_section_that_runs_past_the_end() -> None:
    module = make_module(3000, "cut-short")
    assert cut_short(module) is None
    assert cut_short(module[:20]) == "the type section at offset 0x8 declares 13 bytes, 10 remain"
    assert cut_short(module[:9]) is None  # inside a section header: nothing to add
    assert cut_short(module + b"\x0a\xff") is None  # a size that never ends
    assert cut_short(module + b"\x63\x05") == (
        f"the id 99 section at offset 0x{len(module):x} declares 5 bytes, 0 remain"
    )
