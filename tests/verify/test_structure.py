"""Tests of csi_wasm.verify.structure: wasmtime's verdict and the facts of a module."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st
from support.wasm import from_wat, join_sections, make_module, split_sections

from csi_wasm.verify import Abi, InvalidModule, facts_of, judge, read_facts, validator

DEMO = Path(__file__).resolve().parents[2] / "demo" / "filter" / "add-header.wasm"


def test_demo_filter_is_a_valid_proxy_wasm_module() -> None:
    facts = read_facts(DEMO)
    assert facts.structure_error is None
    assert facts.size == DEMO.stat().st_size
    assert facts.abi_versions == ("0.2.0",)
    assert ("memory", "memory") in facts.exports
    assert {module for module, _, _ in facts.imports} == {"env", "wasi_unstable"}
    judge(facts, Abi.PROXY_WASM)


def test_validator_is_named_with_its_version() -> None:
    assert validator().startswith("wasmtime ")
    assert validator().split()[1][0].isdigit()


@pytest.mark.parametrize("proxy_wasm", [True, False])
def test_test_modules_validate(proxy_wasm: bool) -> None:
    facts = facts_of(make_module(20_000, "valid", proxy_wasm=proxy_wasm))
    assert facts.structure_error is None
    assert facts.size == 20_000


def _structure_error(module: bytes) -> str:
    facts = facts_of(module)
    assert facts.structure_error is not None
    return facts.structure_error


def test_truncated_module_says_what_is_missing() -> None:
    module = make_module(5000, "truncated")
    reason = _structure_error(module[:2500])
    assert reason.startswith("unexpected end-of-file (at offset ")
    assert reason.endswith(
        "; the module is cut short: the custom section at offset 0x86 declares 4863 bytes, "
        "2363 remain"
    )


def test_sections_out_of_order() -> None:
    sections = split_sections(make_module(500, "order"))
    ids = [section_id for section_id, _ in sections]
    # The memory section (5) moved before the function section (3).
    function, memory = ids.index(3), ids.index(5)
    sections[function], sections[memory] = sections[memory], sections[function]
    assert "out of order" in _structure_error(join_sections(sections))


def test_trailing_garbage() -> None:
    assert "malformed section id" in _structure_error(make_module(500, "tail") + b"\xff\x01")


def test_function_body_type_error() -> None:
    # Valid framing, an ill-typed body: only a full validator sees it.
    sections = split_sections(make_module(500, "typed"))
    code = next(i for i, (section_id, _) in enumerate(sections) if section_id == 10)
    # seed's body "i32.const N; end" becomes "i64.const N; end" for an i32 result.
    payload = bytearray(sections[code][1])
    payload[payload.index(0x41)] = 0x42
    sections[code] = (10, bytes(payload))
    assert "type mismatch" in _structure_error(join_sections(sections))


def test_unreadable_yet_valid_would_be_refused_not_crash() -> None:
    # An export kind our reader does not know cannot validate either: both agree.
    module = from_wat("(module)") + b"\x07\x05\x01\x01a\x09\x00"
    facts = facts_of(module)
    assert facts.structure_error is not None
    assert facts.exports == ()


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    abi=st.sampled_from(Abi),
)
def test_mutated_modules_give_facts_and_a_verdict_never_an_exception(
    data: st.DataObject, abi: Abi
) -> None:
    module = bytearray(make_module(400, "mutate"))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(module) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            module[where] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del module[where : where + data.draw(st.integers(1, 40))]
        else:
            module[where:where] = data.draw(st.binary(min_size=1, max_size=8))
        if not module:
            break
    facts = facts_of(bytes(module))
    assert facts.size == len(module)
    # In place (our call) and wasmtime's own Module.validate (a copy) agree.
    try:
        wasmtime.Module.validate(wasmtime.Engine(), bytes(module))
    except wasmtime.WasmtimeError as error:
        reason = " ".join(str(error).split())
        assert facts.structure_error is not None
        assert facts.structure_error.startswith(
            reason if len(reason) <= 300 else reason[:300] + "..."
        )
    else:
        assert facts.structure_error is None
    try:
        judge(facts, abi)
    except InvalidModule as refused:
        assert refused.code == "FAILED_PRECONDITION"
        assert "\n" not in refused.message


def test_read_facts_of_a_file_equals_the_facts_of_its_bytes(tmp_path: Path) -> None:
    for name, module in (
        ("valid", make_module(70_000, "file")),
        ("cut", make_module(70_000, "file")[:30_000]),
        ("empty", b""),
        ("one", b"\0"),
    ):
        path = tmp_path / name
        path.write_bytes(module)
        assert read_facts(path) == facts_of(module) == facts_of(bytearray(module))
    assert read_facts(tmp_path / "empty").structure_error is not None
