"""--registry-mirror parsing and routing."""

from __future__ import annotations

import pytest

from csi_wasm.mirrors import Mirrors, parse_mirror
from csi_wasm.reference import parse_reference


def test_mirror_with_prefix_rewrites_the_repository() -> None:
    mirror = parse_mirror("docker.io=harbor.example.com/dockerhub")
    rewritten = mirror.rewrite(parse_reference("nginx:1.27"))
    assert str(rewritten) == "harbor.example.com/dockerhub/library/nginx:1.27"


def test_source_host_is_normalised() -> None:
    assert parse_mirror("index.docker.io=m.example:5000").source == "docker.io"


def test_candidates_try_mirrors_in_order_then_the_source() -> None:
    mirrors = Mirrors([parse_mirror("ghcr.io=a.example"), parse_mirror("ghcr.io=b.example/p")])
    ref = parse_reference("ghcr.io/acme/f@sha256:" + "a" * 64)
    assert [str(r) for r in mirrors.candidates(ref)] == [
        "a.example/acme/f@sha256:" + "a" * 64,
        "b.example/p/acme/f@sha256:" + "a" * 64,
        str(ref),
    ]
    other = parse_reference("quay.io/x/y:1")
    assert mirrors.candidates(other) == [other]


@pytest.mark.parametrize("text", ["ghcr.io", "=m.example", "ghcr.io=", "ghcr.io=UPPER/Case"])
def test_malformed_mirrors_name_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--registry-mirror"):
        parse_mirror(text)
