"""Tests of csi_wasm.verify.facts: the record kept with a cached module."""

from __future__ import annotations

import json

import pytest
from support.wasm import from_wat, make_module

from csi_wasm.verify import ModuleFacts, facts_of


def test_json_round_trip() -> None:
    facts = facts_of(
        from_wat(
            '(module (import "env" "f" (func)) (memory (export "memory") 1)'
            ' (func (export "proxy_abi_version_0_1_0")))'
        )
    )
    again = ModuleFacts.from_json(json.loads(json.dumps(facts.to_json())))
    assert again == facts
    assert again.abi_versions == ("0.1.0",)


def test_json_round_trip_of_an_invalid_module() -> None:
    facts = facts_of(make_module(300, "cut")[:100])
    assert ModuleFacts.from_json(facts.to_json()) == facts


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"size": "1", "structure_error": None, "exports": [], "imports": []},
        {"size": 1, "structure_error": 3, "exports": [], "imports": []},
        {"size": 1, "structure_error": None, "exports": [{"name": "a"}], "imports": []},
        {"size": 1, "structure_error": None, "exports": 5, "imports": []},
    ],
)
def test_damaged_json_is_a_value_error(data: object) -> None:
    with pytest.raises(ValueError, match="not module facts"):
        ModuleFacts.from_json(data)
