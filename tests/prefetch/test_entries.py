"""Tests of csi_wasm.prefetch.entries: the prefetch list and the --prefetch flag."""

from __future__ import annotations

import json

import pytest
from support.prefetch import HEX_A, HEX_B, SIGNATURE

from csi_wasm.prefetch import (
    PrefetchEntry,
    parse_prefetch_flag,
    parse_prefetch_list,
)
from csi_wasm.verify import Abi

# --- the list -------------------------------------------------------------------------


def test_a_list_of_strings_and_objects() -> None:
    text = json.dumps(
        [
            "oci://ghcr.io/acme/filters/add-header:v1.2.0",
            "ghcr.io/acme/bare:v1",
            {"url": "oci://ghcr.io/acme/pinned:v2", "sha256": HEX_A},
            {"url": "https://wasm.example.com/authz.wasm", "sha256": f"sha256:{HEX_B}"},
            {"url": "ghcr.io/acme/moving:v3", "imagePullPolicy": "Always"},
            {"url": "ghcr.io/acme/null-sha:v1", "sha256": None},
        ]
    )

    entries, problems = parse_prefetch_list(text)

    assert problems == []
    assert entries == [
        PrefetchEntry("oci://ghcr.io/acme/filters/add-header:v1.2.0"),
        PrefetchEntry("ghcr.io/acme/bare:v1"),
        PrefetchEntry("oci://ghcr.io/acme/pinned:v2", HEX_A),
        PrefetchEntry("https://wasm.example.com/authz.wasm", f"sha256:{HEX_B}"),
        PrefetchEntry("ghcr.io/acme/moving:v3", None, "Always"),
        PrefetchEntry("ghcr.io/acme/null-sha:v1"),
    ]
    assert entries[3].request().sha256 == HEX_B


@pytest.mark.parametrize("text", ["", "  \n", "[]"])
def test_an_empty_list(text: str) -> None:
    assert parse_prefetch_list(text) == ([], [])


def test_bad_json_is_one_problem() -> None:
    entries, problems = parse_prefetch_list('["oci://ghcr.io/a/b:v1",')
    assert entries == []
    [problem] = problems
    assert "prefetch.json is not valid JSON" in problem
    assert "\n" not in problem


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        ({"url": "oci://ghcr.io/a/b:v1"}, "object"),
        ("oci://ghcr.io/a/b:v1", "string"),
        (3, "number"),
    ],
)
def test_a_document_that_is_not_a_list_is_one_problem(document: object, kind: str) -> None:
    entries, problems = parse_prefetch_list(json.dumps(document))
    assert entries == []
    [problem] = problems
    assert "must be a JSON list" in problem
    assert f"not a {kind}" in problem


def test_bad_entries_are_skipped_with_one_problem_each() -> None:
    text = json.dumps(
        [
            "oci://ghcr.io/acme/good:v1",
            "oci://GHCR.io/Acme/Bad:v1",
            42,
            {"url": 1},
            {"sha256": HEX_A},
            {"url": "ghcr.io/acme/f:v1", "tag": "v2"},
            {"url": "ghcr.io/acme/f:v1", "sha256": "nothex"},
            {"url": "ghcr.io/acme/f:v1", "imagePullPolicy": "Never"},
            "ftp://example.com/f.wasm",
            "",
            {"url": "ghcr.io/acme/also-good:v1"},
        ]
    )

    entries, problems = parse_prefetch_list(text)

    assert entries == [
        PrefetchEntry("oci://ghcr.io/acme/good:v1"),
        PrefetchEntry("ghcr.io/acme/also-good:v1"),
    ]
    assert len(problems) == 9
    assert [p.split(" skipped:")[0] for p in problems] == [f"entry {i}" for i in range(1, 10)]
    assert all("\n" not in p for p in problems)
    assert "not a number" in problems[1]
    assert "'url' must be a string" in problems[2]
    assert "'url' is required" in problems[3]
    assert "unknown field(s) 'tag'" in problems[4]
    assert "sha256" in problems[5]
    assert "imagePullPolicy" in problems[6]
    assert "scheme 'ftp'" in problems[7]


def test_an_https_url_without_sha256_is_a_problem() -> None:
    text = json.dumps(
        [f"https://wasm.example.com/f.wasm?X-Signature={SIGNATURE}", {"url": "https://x.test/g"}]
    )

    entries, problems = parse_prefetch_list(text)

    assert entries == []
    assert len(problems) == 2
    assert all("'sha256' is required" in p for p in problems)
    assert SIGNATURE not in "".join(problems)


def test_a_prefetch_flag_takes_a_url_and_an_optional_sha256() -> None:
    assert parse_prefetch_flag("oci://ghcr.io/a/b:v1") == PrefetchEntry("oci://ghcr.io/a/b:v1")
    assert parse_prefetch_flag(" ghcr.io/a/b ") == PrefetchEntry("ghcr.io/a/b")
    assert parse_prefetch_flag(f"https://x.test/f.wasm#sha256={HEX_A}") == PrefetchEntry(
        "https://x.test/f.wasm", HEX_A
    )


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (f"https://x.test/f.wasm?sig={SIGNATURE}", "'sha256' is required"),
        ("https://x.test/f.wasm#sha256=nothex", "not a sha256"),
        ("oci://Bad Ref", "--prefetch 'oci://Bad Ref'"),
    ],
)
def test_a_bad_prefetch_flag_is_a_value_error(flag: str, says: str) -> None:
    with pytest.raises(ValueError, match="--prefetch") as info:
        parse_prefetch_flag(flag)
    assert says in str(info.value)
    assert SIGNATURE not in str(info.value)


# --- the prefetcher: seams ------------------------------------------------------------


def test_deeply_nested_json_is_a_problem_not_a_crash() -> None:
    entries, problems = parse_prefetch_list("[" * 100_000)
    assert entries == []
    assert problems and "nested too deeply" in problems[0]


# --- names (the node catalog) ---------------------------------------------------------


def test_entries_take_a_name_kept_as_given_for_the_catalog_to_check() -> None:
    text = json.dumps(
        [
            {"name": "add-header", "url": "oci://ghcr.io/acme/add-header:stable"},
            {"name": "../x", "url": "oci://ghcr.io/acme/x:v1"},
            {"name": 7, "url": "oci://ghcr.io/acme/y:v1"},
        ]
    )

    entries, problems = parse_prefetch_list(text)

    assert entries == [
        PrefetchEntry("oci://ghcr.io/acme/add-header:stable", name="add-header"),
        PrefetchEntry("oci://ghcr.io/acme/x:v1", name="../x"),
    ]
    assert problems == ["entry 2 skipped: field 'name' must be a string, not a number"]


def test_a_named_tag_is_re_resolved_but_a_digest_or_an_explicit_policy_is_not() -> None:
    tag = "oci://ghcr.io/acme/add-header:stable"
    assert PrefetchEntry(tag, name="a").request().pull_policy.value == "Always"
    assert PrefetchEntry(tag).request().pull_policy.value == "IfNotPresent"
    assert PrefetchEntry(tag, None, "IfNotPresent", "a").request().pull_policy.value == (
        "IfNotPresent"
    )
    pinned = f"oci://ghcr.io/acme/add-header@sha256:{HEX_A}"
    assert PrefetchEntry(pinned, name="a").request().pull_policy.value == "IfNotPresent"


def test_an_entry_may_ask_for_an_abi_as_a_volume_does() -> None:
    text = json.dumps(
        [
            {"url": "ghcr.io/acme/plain:v1", "abi": "any"},
            {"url": "ghcr.io/acme/filter:v1", "abi": "proxy-wasm"},
            {"url": "ghcr.io/acme/default:v1"},
            {"url": "ghcr.io/acme/bad:v1", "abi": "wasi"},
        ]
    )
    entries, problems = parse_prefetch_list(text)
    assert [entry.request().abi for entry in entries] == [Abi.ANY, Abi.PROXY_WASM, None]
    assert problems == [
        "entry 3 skipped: volume attribute 'abi' 'wasi' is not one of: proxy-wasm, any"
    ]
