"""Tests of csi_wasm.reference: the distribution/reference grammar and normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csi_wasm.errors import InvalidArgument
from csi_wasm.reference import Reference, parse_digest, parse_reference

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx", Reference("docker.io", "library/nginx")),
        ("nginx:1.25", Reference("docker.io", "library/nginx", "1.25")),
        ("acme/filter", Reference("docker.io", "acme/filter")),
        ("docker.io/nginx", Reference("docker.io", "library/nginx")),
        ("index.docker.io/nginx:v1", Reference("docker.io", "library/nginx", "v1")),
        ("Index.Docker.IO/acme/x", Reference("docker.io", "acme/x")),
        ("docker.io/library/nginx", Reference("docker.io", "library/nginx")),
        ("ghcr.io/acme/filters/add-header:v1.2.0",
         Reference("ghcr.io", "acme/filters/add-header", "v1.2.0")),
        ("GHCR.io/acme/f", Reference("ghcr.io", "acme/f")),
        ("localhost/f", Reference("localhost", "f")),
        ("localhost:5000/a/b", Reference("localhost:5000", "a/b")),
        ("127.0.0.1:5000/a:latest", Reference("127.0.0.1:5000", "a", "latest")),
        ("[::1]:5000/a", Reference("[::1]:5000", "a")),
        ("[0:0::1]/a", Reference("[::1]", "a")),
        ("reg:05000/a", Reference("reg:5000", "a")),
        (f"ghcr.io/a@{DIGEST}", Reference("ghcr.io", "a", None, DIGEST)),
        (f"ghcr.io/a:v1@{DIGEST}", Reference("ghcr.io", "a", "v1", DIGEST)),
        ("a__b--c_d.e", Reference("docker.io", "library/a__b--c_d.e")),
        ("r.io/a.b__c---d_e/f", Reference("r.io", "a.b__c---d_e/f")),
        ("x:_Tag.9-", Reference("docker.io", "library/x", "_Tag.9-")),
        ("docker.io", Reference("docker.io", "library/docker.io")),  # as docker does
        ("localhost:5000", Reference("docker.io", "library/localhost", "5000")),
    ],
)  # fmt: skip
def test_parses_and_normalises(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("ghcr.io/Acme/x", "uppercase letters are not allowed in a repository name"),
        ("Nginx", "uppercase"),
        ("x:" + "a" * 129, "tag too long (129 characters, at most 128)"),
        ("x:", "tag after ':' is empty"),
        ("x:.v1", "must not start with '.' or '-'"),
        ("x:v1!", "may only contain"),
        ("ghcr.io/a//b", "empty path component"),
        ("ghcr.io/a/", "empty path component"),
        ("ghcr.io/", "repository name after the registry is empty"),
        ("ghcr.io/-a", "'-a' is not valid"),
        ("ghcr.io/a_-b", "is not valid"),
        ("ghcr.io/a___b", "is not valid"),
        ("a@sha512:" + "0" * 128, "only sha256 digests are supported"),
        ("a@md5", "must be 'sha256:<64 hex digits>'"),
        ("a@sha256:abc", "64 hex digits, got 3"),
        ("a@sha256:" + HEX.upper(), "must be lowercase"),
        ("a@sha256:" + "g" * 64, "not hex digits"),
        (f"a@{DIGEST}@{DIGEST}", "sha256"),
        ("a b", "whitespace"),
        ("a\n", "whitespace"),
        ("oci://ghcr.io/a", "'oci://' is not part of a reference"),
        ("host:port/a", "port must be a number"),
        ("host:70000/a", "port must be a number"),
        ("-bad.io/a", "not a valid host name"),
        ("bad..io/a", "not a valid host name"),
        ("a.b_c/g", "not a valid host name"),
        ("[::1/a", "closing ']'"),
        ("[zz::1]/a", "IPv6 address"),
        ("[::1]x/a", "only ':<port>'"),
        (HEX, "looks like an image ID"),
        ("r.io/" + "a" * 251, "name too long (256 characters including the registry, at most 255)"),
        ("a" * 250, "name too long"),
        ("@" + DIGEST, "repository name is empty"),
    ],
)  # fmt: skip
def test_rejects_with_a_useful_message(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert problem in message
    assert repr(text[:200]) in message
    assert "a valid one looks like" in message
    assert "\n" not in message


def test_name_length_counts_the_normalised_name() -> None:
    ok = "r.io/" + "a" * 250  # exactly 255
    assert str(parse_reference(ok)) == ok
    with pytest.raises(InvalidArgument, match="name too long"):
        parse_reference(ok + "a")


def test_long_input_is_truncated_in_the_message() -> None:
    text = "A" * 5000
    with pytest.raises(InvalidArgument) as caught:
        parse_reference(text)
    assert len(str(caught.value)) < 500
    assert "..." in str(caught.value)


def test_canonical_string_and_properties() -> None:
    ref = parse_reference("nginx")
    assert str(ref) == "docker.io/library/nginx"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.name == "docker.io/library/nginx"
    assert ref.is_latest_or_untagged
    assert ref.manifest_ref == "latest"
    assert parse_reference("nginx:latest").is_latest_or_untagged
    assert not parse_reference("nginx:1.0").is_latest_or_untagged
    assert not parse_reference(f"nginx@{DIGEST}").is_latest_or_untagged
    assert not parse_reference(f"nginx:latest@{DIGEST}").is_latest_or_untagged

    local = parse_reference("localhost:5000/a/b:v2")
    assert local.api_host == "localhost:5000"
    assert local.manifest_ref == "v2"

    pinned = local.with_digest(DIGEST)
    assert str(pinned) == f"localhost:5000/a/b:v2@{DIGEST}"
    assert pinned.manifest_ref == DIGEST
    assert parse_reference(str(pinned)) == pinned


def test_with_digest_validates() -> None:
    with pytest.raises(InvalidArgument, match="only sha256"):
        parse_reference("a").with_digest("sha512:" + "0" * 128)
    assert parse_digest(DIGEST) == DIGEST


def test_reference_is_frozen_and_hashable() -> None:
    ref = parse_reference("ghcr.io/a:v1")
    assert {ref: 1}[parse_reference("GHCR.IO/a:v1")] == 1
    with pytest.raises(AttributeError):
        ref.tag = "v2"  # type: ignore[misc]


# -- properties ----------------------------------------------------------------------

_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def _component(draw: st.DrawFn, dots: bool = True) -> str:
    separator = _separator if dots else _separator.filter(lambda s: s != ".")
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(separator), draw(_alnum)]
    return "".join(parts)


_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True)
_domain = st.one_of(
    st.just("docker.io"),
    st.just("index.docker.io"),
    st.just("localhost"),
    st.builds(lambda a, b: f"{a}.{b}", _label, _label),
    st.just("[::1]"),
    st.just("[2001:DB8::1]"),
)


@st.composite
def valid_references(draw: st.DrawFn) -> str:
    text = ""
    has_domain = draw(st.booleans())
    if has_domain:
        text = draw(_domain)
        if draw(st.booleans()):
            text += f":{draw(st.integers(1, 65535))}"
        text += "/"
    path = [draw(_component()) for _ in range(draw(st.integers(1, 3)))]
    if not has_domain and len(path) > 1:
        # Without a domain the first component must not look like one (docker's rule).
        path[0] = draw(_component(dots=False).filter(lambda c: c != "localhost"))
    text += "/".join(path)
    if draw(st.booleans()):
        text += ":" + draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
    if draw(st.booleans()):
        text += "@sha256:" + draw(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
    return text


@given(valid_references())
@settings(max_examples=400)
def test_round_trip(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidArgument as exc:
        # The generator can make a 64-hex one-component name: rejected like docker does.
        assert "image ID" in str(exc)
        return
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)


_ref_chars = "abcAZ019._-/:@[]%" + "sha256:"


@given(st.one_of(st.text(), st.text(alphabet=_ref_chars, max_size=80)))
@settings(max_examples=600)
def test_arbitrary_text_raises_only_invalid_argument(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidArgument as exc:
        assert "\n" not in str(exc)
        return
    assert parse_reference(str(ref)) == ref
