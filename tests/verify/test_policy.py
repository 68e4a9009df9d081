"""Tests of csi_wasm.verify.policy: rules, globs, and pods that may only tighten."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_wasm.errors import FailedPrecondition, InvalidArgument
from csi_wasm.verify.policy import (
    Demand,
    Mode,
    PolicyError,
    glob_pattern,
    load_policy,
    parse_policy,
)

KEYS = {"team-a", "release", "other"}
POLICY = """
rules:
- match: "ghcr.io/acme/filters/**"
  keys: [team-a, release]
- match: "ghcr.io/acme/*"
  keys: [release]
  mode: warn
"""


def test_globs() -> None:
    one, deep = glob_pattern("r.io/a/*"), glob_pattern("r.io/a/**")
    assert one.fullmatch("r.io/a/x") and not one.fullmatch("r.io/a/x/y")
    assert deep.fullmatch("r.io/a/x/y") and not deep.fullmatch("r.io/ab/x")
    assert not glob_pattern("r.io/a.b").fullmatch("r.io/aXb")  # '.' is literal


def test_first_matching_rule_wins_and_unmatched_is_allowed() -> None:
    policy = parse_policy(POLICY, "p", KEYS)
    assert policy.requirement("ghcr.io/acme/filters/x").demands == (
        Demand(("team-a", "release"), True, "rule ghcr.io/acme/filters/**"),
    )
    warned = policy.requirement("ghcr.io/acme/y")
    assert warned and not warned.enforced
    assert not policy.requirement("docker.io/library/z")


def test_unmatched_deny_names_the_repository() -> None:
    policy = parse_policy(POLICY, "p", KEYS, unmatched_deny=True)
    with pytest.raises(FailedPrecondition, match=r"docker\.io/library/z matches no rule"):
        policy.requirement("docker.io/library/z")


def test_pod_tightens_a_warn_rule_and_an_unmatched_module() -> None:
    policy = parse_policy(POLICY, "p", KEYS)
    tightened = policy.requirement("ghcr.io/acme/y", required=True)
    assert tightened.enforced
    assert tightened.demands[-1] == Demand(("release",), True, "verify: required")
    everyone = policy.requirement("docker.io/library/z", required=True)
    assert everyone.demands == (Demand(("other", "release", "team-a"), True, "verify: required"),)
    extra = policy.requirement("ghcr.io/acme/filters/x", pod_keys=("other",))
    assert [d.keys for d in extra.demands] == [("team-a", "release"), ("other",)]
    assert all(d.enforce for d in extra.demands)


def test_pod_cannot_name_keys_the_node_lacks() -> None:
    policy = parse_policy(POLICY, "p", KEYS)
    with pytest.raises(InvalidArgument, match="names nope, which this node does not have"):
        policy.requirement("ghcr.io/acme/y", pod_keys=("nope",))


def test_required_without_any_node_key_is_invalid() -> None:
    policy = parse_policy("", "p", ())
    with pytest.raises(InvalidArgument, match="no --verify-key"):
        policy.requirement("r.io/a", required=True)


def test_requirement_tokens_differ_by_what_they_ask() -> None:
    policy = parse_policy(POLICY, "p", KEYS)
    plain = policy.requirement("ghcr.io/acme/y")
    assert plain.token() != policy.requirement("ghcr.io/acme/y", required=True).token()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [", "not valid YAML"),
        ("- a", "must be a mapping"),
        ("rules: {}", "'rules' must be a list"),
        ("rules: [{keys: [release]}]", "rule 1 needs 'match'"),
        ("rules: [{match: a}]", "rule 1 needs 'keys'"),
        ("rules: [{match: a, keys: [ghost]}]", "ghost that no --verify-key defines"),
        ("rules: [{match: a, keys: [release], mode: audit}]", "mode 'audit'"),
        ("rules: [{match: a, keys: [release], modes: warn}]", "unknown field"),
    ],
)
def test_bad_policies_are_named(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text, "policy file p.yaml", KEYS)


def test_load_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    policy = load_policy(path, KEYS)
    assert [r.mode for r in policy.rules] == [Mode.ENFORCE, Mode.WARN]
    assert load_policy(None, KEYS).rules == ()
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml", KEYS)
