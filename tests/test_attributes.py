"""Tests of csi_wasm.attributes: volume attributes into a ModuleRequest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csi_wasm.attributes import (
    ACCEPTED_KEYS,
    EPHEMERAL,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    HttpSource,
    ModuleRequest,
    PodInfo,
    PullPolicy,
    parse_attributes,
    parse_catalog,
    parse_source,
    pod_info,
)
from csi_wasm.errors import InvalidArgument
from csi_wasm.reference import Reference
from csi_wasm.verify import Abi

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
OTHER_HEX = "f" * 64


def invalid(context: dict[str, str]) -> str:
    """The message of the InvalidArgument that ``context`` raises; asserted one line."""
    with pytest.raises(InvalidArgument) as info:
        parse_attributes(context)
    message = info.value.message
    assert "\n" not in message
    assert "\r" not in message
    assert info.value.code == "INVALID_ARGUMENT"
    return message


# url forms


@pytest.mark.parametrize(
    ("url", "source"),
    [
        (
            "oci://ghcr.io/acme/filters/add-header:v1.2.0",
            Reference("ghcr.io", "acme/filters/add-header", "v1.2.0"),
        ),
        (
            "ghcr.io/acme/filters/add-header:v1.2.0",
            Reference("ghcr.io", "acme/filters/add-header", "v1.2.0"),
        ),
        ("OCI://ghcr.io/acme/f:v1", Reference("ghcr.io", "acme/f", "v1")),
        ("oci://nginx", Reference("docker.io", "library/nginx")),
        ("localhost:5000/f", Reference("localhost:5000", "f")),
        (f"ghcr.io/acme/f@{DIGEST}", Reference("ghcr.io", "acme/f", None, DIGEST)),
        (f"oci://ghcr.io/acme/f:v1@{DIGEST}", Reference("ghcr.io", "acme/f", "v1", DIGEST)),
        ("  oci://ghcr.io/acme/f:v1  ", Reference("ghcr.io", "acme/f", "v1")),
    ],
)
def test_oci_url_forms(url: str, source: Reference) -> None:
    request = parse_attributes({"url": url})
    assert request.source == source
    assert request.sha256 is None


def test_bare_reference_is_the_same_as_oci_scheme() -> None:
    assert parse_source("ghcr.io/a/b:v1") == parse_source("oci://ghcr.io/a/b:v1")


def test_bad_reference_is_invalid_argument() -> None:
    message = invalid({"url": "oci://ghcr.io/Acme/F:v1"})
    assert "ghcr.io/Acme/F:v1" in message


def test_oci_url_with_uppercase_digest_is_refused() -> None:
    message = invalid({"url": f"ghcr.io/a@sha256:{HEX.upper()}"})
    assert "lowercase" in message


@pytest.mark.parametrize("scheme", ["https", "http", "HTTPS"])
def test_http_urls_need_sha256(scheme: str) -> None:
    url = f"{scheme}://example.com/filters/f.wasm"
    message = invalid({"url": url})
    assert "'sha256'" in message
    assert "required" in message

    request = parse_attributes({"url": url, "sha256": HEX})
    assert request == ModuleRequest(HttpSource(url), HEX, PullPolicy.IF_NOT_PRESENT)
    assert str(request.source) == url


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("ftp://example.com/f.wasm", "ftp"),
        ("file:///etc/passwd", "file"),
        ("s3://bucket/f.wasm", "s3"),
        ("docker://ghcr.io/a/b", "docker"),
    ],
)
def test_other_schemes_are_refused(url: str, scheme: str) -> None:
    message = invalid({"url": url, "sha256": HEX})
    assert repr(scheme) in message
    assert "oci://" in message
    assert "https://" in message


def test_scheme_message_stays_one_line_for_hostile_url() -> None:
    message = invalid({"url": "ftp://a\nb\r\nc" + "x" * 1000})
    assert len(message) < 400


@pytest.mark.parametrize("context", [{}, {"url": ""}, {"url": "   "}, {"sha256": HEX}])
def test_url_is_required(context: dict[str, str]) -> None:
    message = invalid(context)
    assert "'url' is required" in message


# keys


@pytest.mark.parametrize("key", ["foo", "URL", "Sha256", "pullPolicy", "csi.storage.k8s.io"])
def test_unknown_keys_are_refused_naming_accepted_ones(key: str) -> None:
    message = invalid({"url": "ghcr.io/a/b:v1", key: "x"})
    assert repr(key) in message
    assert "accepted: url, sha256, imagePullPolicy, verify, verifyKeys, abi" in message


def test_all_unknown_keys_are_named_sorted() -> None:
    message = invalid({"url": "ghcr.io/a/b:v1", "zeta": "1", "alpha": "2"})
    assert "'alpha', 'zeta'" in message


def test_unknown_keys_are_reported_before_a_missing_url() -> None:
    message = invalid({"typo-url": "ghcr.io/a/b:v1"})
    assert "'typo-url'" in message


def test_accepted_keys_constant() -> None:
    assert ACCEPTED_KEYS == ("url", "sha256", "imagePullPolicy", "verify", "verifyKeys", "abi")


def test_verify_attributes_only_ask_for_more() -> None:
    request = parse_attributes(
        {"url": "ghcr.io/a/b:v1", "verify": "required", "verifyKeys": " team-a, ,release "}
    )
    assert request.verify_required and request.verify_keys == ("team-a", "release")
    plain = parse_attributes({"url": "ghcr.io/a/b:v1"})
    assert not plain.verify_required and plain.verify_keys == ()
    for waiver in ("false", "none", "optional", "skip"):
        assert "is not 'required'" in invalid({"url": "ghcr.io/a/b:v1", "verify": waiver})


def test_kubelet_keys_are_accepted() -> None:
    context = {
        "url": "ghcr.io/a/b:v1",
        POD_NAME: "web-0",
        POD_NAMESPACE: "shop",
        POD_UID: "1234-5678",
        EPHEMERAL: "true",
        "csi.storage.k8s.io/serviceAccount.name": "default",
        "csi.storage.k8s.io/some.future.key": "x",
    }
    request = parse_attributes(context)
    assert request.source == Reference("ghcr.io", "a/b", "v1")


# sha256


@pytest.mark.parametrize(
    "value",
    [HEX, HEX.upper(), f"sha256:{HEX}", f"sha256:{HEX.upper()}", f"  {HEX}\n"],
)
def test_sha256_is_normalised(value: str) -> None:
    request = parse_attributes({"url": "ghcr.io/a/b:v1", "sha256": value})
    assert request.sha256 == HEX


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_sha256_means_none(value: str) -> None:
    assert parse_attributes({"url": "ghcr.io/a/b:v1", "sha256": value}).sha256 is None


@pytest.mark.parametrize(
    "value",
    [
        HEX[:-1],
        HEX + "0",
        "g" * 64,
        f"sha512:{HEX}",
        f"md5:{HEX}",
        "sha256:",
        f"sha256:sha256:{HEX}",
        f"{HEX[:32]} {HEX[32:]}",
    ],
)
def test_bad_sha256_is_refused(value: str) -> None:
    message = invalid({"url": "ghcr.io/a/b:v1", "sha256": value})
    assert "'sha256'" in message
    assert "64 hex digits" in message


def test_bad_sha256_message_is_bounded() -> None:
    message = invalid({"url": "ghcr.io/a/b:v1", "sha256": "z" * 10_000})
    assert len(message) < 300


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.booleans(), st.booleans())
def test_sha256_normalisation_property(raw: bytes, upper: bool, prefix: bool) -> None:
    hex_digest = raw.hex()
    value = hex_digest.upper() if upper else hex_digest
    if prefix:
        value = "sha256:" + value
    assert parse_attributes({"url": "ghcr.io/a/b:v1", "sha256": value}).sha256 == hex_digest


# imagePullPolicy


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        ("ghcr.io/a/b", PullPolicy.ALWAYS),
        ("oci://ghcr.io/a/b:latest", PullPolicy.ALWAYS),
        ("nginx", PullPolicy.ALWAYS),
        ("ghcr.io/a/b:v1", PullPolicy.IF_NOT_PRESENT),
        ("ghcr.io/a/b:Latest", PullPolicy.IF_NOT_PRESENT),
        (f"ghcr.io/a/b@{DIGEST}", PullPolicy.IF_NOT_PRESENT),
        (f"ghcr.io/a/b:latest@{DIGEST}", PullPolicy.IF_NOT_PRESENT),
    ],
)
def test_default_pull_policy(url: str, policy: PullPolicy) -> None:
    assert parse_attributes({"url": url}).pull_policy is policy
    assert parse_attributes({"url": url, "imagePullPolicy": ""}).pull_policy is policy
    unspecified = {"url": url, "imagePullPolicy": "UNSPECIFIED_POLICY"}
    assert parse_attributes(unspecified).pull_policy is policy


def test_default_pull_policy_for_https_is_if_not_present() -> None:
    request = parse_attributes({"url": "https://example.com/f.wasm", "sha256": HEX})
    assert request.pull_policy is PullPolicy.IF_NOT_PRESENT


@pytest.mark.parametrize(
    ("url", "value", "policy"),
    [
        ("ghcr.io/a/b:v1", "Always", PullPolicy.ALWAYS),
        ("ghcr.io/a/b", "IfNotPresent", PullPolicy.IF_NOT_PRESENT),
        ("ghcr.io/a/b:latest", " IfNotPresent ", PullPolicy.IF_NOT_PRESENT),
        (f"ghcr.io/a/b@{DIGEST}", "Always", PullPolicy.ALWAYS),
    ],
)
def test_explicit_pull_policy_wins(url: str, value: str, policy: PullPolicy) -> None:
    assert parse_attributes({"url": url, "imagePullPolicy": value}).pull_policy is policy


@pytest.mark.parametrize("value", ["always", "ifnotpresent", "Never", "IF_NOT_PRESENT", "x\ny"])
def test_bad_pull_policy_lists_allowed_values(value: str) -> None:
    message = invalid({"url": "ghcr.io/a/b:v1", "imagePullPolicy": value})
    assert "'imagePullPolicy'" in message
    assert "Always, IfNotPresent" in message


# pod info


def test_pod_info() -> None:
    info = pod_info({POD_NAMESPACE: "shop", POD_NAME: "web-0", POD_UID: "u-1", "url": "x"})
    assert info == PodInfo("shop", "web-0", "u-1")
    assert str(info) == "shop/web-0"


def test_pod_info_missing_fields() -> None:
    info = pod_info({"url": "ghcr.io/a/b"})
    assert info == PodInfo("", "", "")
    assert str(info) == ""


def test_module_request_is_frozen_and_comparable() -> None:
    first = parse_attributes({"url": "ghcr.io/a/b:v1", "sha256": HEX.upper()})
    second = parse_attributes({"url": "oci://ghcr.io/a/b:v1", "sha256": f"sha256:{HEX}"})
    assert first == second
    assert hash(first) == hash(second)
    assert first != parse_attributes({"url": "ghcr.io/a/b:v1", "sha256": OTHER_HEX})


# -- abi ---------------------------------------------------------------------------------


def test_abi_defaults_to_the_node_default() -> None:
    assert parse_attributes({"url": "ghcr.io/a/b:v1"}).abi is None


@pytest.mark.parametrize(("value", "abi"), [("proxy-wasm", Abi.PROXY_WASM), (" any ", Abi.ANY)])
def test_abi_values(value: str, abi: Abi) -> None:
    assert parse_attributes({"url": "ghcr.io/a/b:v1", "abi": value}).abi is abi


@pytest.mark.parametrize("value", ["wasi", "Proxy-Wasm", "proxy_wasm", "x" * 100])
def test_unknown_abi_is_invalid_argument(value: str) -> None:
    message = invalid({"url": "ghcr.io/a/b:v1", "abi": value})
    assert message.startswith(f"volume attribute 'abi' {value[:40]!r} is not one of:")
    assert message.endswith("proxy-wasm, any")


def test_empty_abi_is_the_node_default() -> None:
    assert parse_attributes({"url": "ghcr.io/a/b:v1", "abi": " "}).abi is None


# --- the catalog volume -----------------------------------------------------------------


def test_a_catalog_volume_names_its_catalog() -> None:
    assert parse_catalog({"catalog": "node", POD_NAME: "web-0"}) == "node"
    assert parse_catalog({"url": "oci://r.io/a:v1"}) is None


@pytest.mark.parametrize("key", ["url", "sha256", "imagePullPolicy", "colour"])
def test_a_catalog_volume_takes_no_other_attribute(key: str) -> None:
    with pytest.raises(InvalidArgument, match=f"'catalog' excludes '{key}'"):
        parse_catalog({"catalog": "node", key: "x"})


@pytest.mark.parametrize("name", ["cluster", "", "Node", "../node"])
def test_an_unknown_catalog_is_refused_naming_node(name: str) -> None:
    with pytest.raises(InvalidArgument, match="the only catalog is 'node'"):
        parse_catalog({"catalog": name})
