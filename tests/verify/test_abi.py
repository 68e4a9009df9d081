"""Tests of csi_wasm.verify.abi: each rule of the proxy-wasm ABI has its own refusal."""

from __future__ import annotations

import pytest
from support.wasm import from_wat, make_module

from csi_wasm.verify import REASONS, Abi, InvalidModule, ModuleFacts, facts_of, judge

WHERE = "ghcr.io/acme/filter:v1"

# Everything Envoy needs, for the tests to take one piece away at a time.
_MEMORY = '(memory (export "memory") 1)'
_ABI = '(func (export "proxy_abi_version_0_2_1"))'
_MALLOC = '(func (export "malloc") (param i32) (result i32) (i32.const 0))'


def _module(*parts: str) -> ModuleFacts:
    return facts_of(from_wat(f"(module {' '.join(parts)})"))


def refused(facts: ModuleFacts, abi: Abi = Abi.PROXY_WASM) -> InvalidModule:
    with pytest.raises(InvalidModule) as info:
        judge(facts, abi, WHERE)
    error = info.value
    assert error.code == "FAILED_PRECONDITION"
    assert error.reason in REASONS
    assert WHERE in error.message
    assert "\n" not in error.message
    return error


def test_complete_module_passes_both_abis() -> None:
    facts = _module(_MEMORY, _ABI, _MALLOC)
    judge(facts, Abi.PROXY_WASM, WHERE)
    judge(facts, Abi.ANY, WHERE)


@pytest.mark.parametrize("version", ["0_1_0", "0_2_0", "0_2_1"])
def test_each_known_abi_version_passes(version: str) -> None:
    facts = _module(_MEMORY, _MALLOC, f'(func (export "proxy_abi_version_{version}"))')
    assert facts.abi_versions == (version.replace("_", "."),)
    judge(facts, Abi.PROXY_WASM)


def test_proxy_on_memory_allocate_is_an_allocator() -> None:
    allocate = '(func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))'
    judge(_module(_MEMORY, _ABI, allocate), Abi.PROXY_WASM)


def test_imported_memory_is_a_memory() -> None:
    judge(_module('(import "env" "memory" (memory 1))', _ABI, _MALLOC), Abi.PROXY_WASM)


def test_wasi_and_env_imports_pass() -> None:
    judge(
        _module(
            '(import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))',
            '(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))',
            '(import "wasi_unstable" "proc_exit" (func (param i32)))',
            _MEMORY,
            _ABI,
            _MALLOC,
        ),
        Abi.PROXY_WASM,
    )


def test_no_abi_export_names_what_was_found() -> None:
    error = refused(facts_of(make_module(300, "plain", proxy_wasm=False)))
    assert error.reason == "no_abi_export"
    assert "exports no proxy_abi_version_* function; found: seed;" in error.message
    assert "abi: any" in error.message


def test_abi_marker_that_is_not_a_function_is_not_an_abi_export() -> None:
    error = refused(
        _module(_MEMORY, _MALLOC, '(global (export "proxy_abi_version_0_2_1") i32 (i32.const 0))')
    )
    assert error.reason == "no_abi_export"


def test_long_export_lists_are_cut() -> None:
    facts = _module(*(f'(func (export "f{i}"))' for i in range(20)))
    error = refused(facts)
    assert "f0, f1, f2, f3, f4, f5, f6, f7 and 12 more" in error.message


def test_no_exports_at_all() -> None:
    assert "found: nothing;" in refused(_module()).message


def test_unknown_abi_version() -> None:
    error = refused(_module(_MEMORY, _MALLOC, '(func (export "proxy_abi_version_0_3_0"))'))
    assert error.reason == "unknown_abi_version"
    assert (
        "exports proxy_abi_version_0_3_0, an ABI version Envoy does not implement" in error.message
    )
    assert "known: 0.1.0, 0.2.0, 0.2.1" in error.message


def test_a_known_version_next_to_an_unknown_one_passes() -> None:
    judge(
        _module(_MEMORY, _MALLOC, _ABI, '(func (export "proxy_abi_version_9_9_9"))'), Abi.PROXY_WASM
    )


def test_foreign_import() -> None:
    error = refused(
        _module('(import "wasi:http/types" "new-fields" (func))', _MEMORY, _ABI, _MALLOC)
    )
    assert error.reason == "foreign_import"
    assert "imports wasi:http/types.new-fields" in error.message
    assert "env, wasi_snapshot_preview1, wasi_unstable" in error.message


def test_no_memory() -> None:
    error = refused(_module(_ABI, _MALLOC))
    assert error.reason == "no_memory"
    assert "no memory" in error.message


def test_no_allocator() -> None:
    error = refused(_module(_MEMORY, _ABI, '(global (export "malloc") i32 (i32.const 0))'))
    assert error.reason == "no_allocator"
    assert "malloc or proxy_on_memory_allocate" in error.message


def test_structure_error_comes_first_and_for_every_abi() -> None:
    module = make_module(2000, "broken")[:1000]
    for abi in Abi:
        error = refused(facts_of(module), abi)
        assert error.reason == "structure"
        assert "is not a valid WebAssembly module: unexpected end-of-file" in error.message


def test_any_accepts_a_plain_module() -> None:
    judge(facts_of(make_module(300, "plain", proxy_wasm=False)), Abi.ANY)
    judge(_module('(import "elsewhere" "f" (func))'), Abi.ANY)


def test_abi_values() -> None:
    assert Abi("proxy-wasm") is Abi.PROXY_WASM
    assert Abi("any") is Abi.ANY
