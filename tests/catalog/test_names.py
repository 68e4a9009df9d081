"""Tests of csi_wasm.catalog.names: entry names are lowercase DNS labels."""

from __future__ import annotations

import pytest

from csi_wasm.catalog.names import name_problem


@pytest.mark.parametrize("name", ["add-header", "waf", "a", "0", "a-b-c-1", "x" * 63])
def test_dns_labels_are_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../x", "not a lowercase DNS label"),
        ("a/b", "not a lowercase DNS label"),
        ("x" * 64, "64 characters long; at most 63"),
        ("Add-Header", "not a lowercase DNS label"),
        ("", "not a lowercase DNS label"),
        ("-a", "not a lowercase DNS label"),
        ("a-", "not a lowercase DNS label"),
        (".hidden", "not a lowercase DNS label"),
        ("a.b", "not a lowercase DNS label"),
        ("a\nb", "not a lowercase DNS label"),
        ("ä", "not a lowercase DNS label"),
    ],
)
def test_hostile_names_are_refused_with_the_reason(name: str, says: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert says in problem
    assert "\n" not in problem
