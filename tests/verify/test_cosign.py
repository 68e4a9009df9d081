"""Tests of csi_wasm.verify.cosign (layout A) on cosign's own output and on made ones."""

from __future__ import annotations

import base64
import hashlib

from support.cosign import DATA, Signer, read_fixture_signature, simplesigning_payload

from csi_wasm.verify.candidate import Layout
from csi_wasm.verify.cosign import SIGNATURE_ANNOTATION, candidate, signature_layers, signature_tag
from csi_wasm.verify.keys import load_key_file, parse_public_key

VALID = DATA / "dir-img-cosign-valid"
VALID_DIGEST = "sha256:" + hashlib.sha256((VALID / "manifest.json").read_bytes()).hexdigest()


def test_tag() -> None:
    assert signature_tag("sha256:ab12") == "sha256-ab12.sig"


def test_real_cosign_signature_verifies_with_cosign_pub() -> None:
    fixture = read_fixture_signature(VALID / "signature-1")
    found = candidate(fixture.payload, fixture.annotations, VALID_DIGEST)
    assert found is not None and found.problem is None and found.layout is Layout.SIMPLESIGNING
    key = load_key_file("k", DATA / "cosign.pub")
    assert key.verifies(found.signed, found.signature, found.material)
    assert not load_key_file("k2", DATA / "cosign2.pub").verifies(
        found.signed, found.signature, found.material
    )


def test_signature_of_another_manifest_has_a_problem() -> None:
    modified = DATA / "dir-img-cosign-modified-manifest"
    digest = "sha256:" + hashlib.sha256((modified / "manifest.json").read_bytes()).hexdigest()
    fixture = read_fixture_signature(modified / "signature-1")
    found = candidate(fixture.payload, fixture.annotations, digest)
    assert found is not None and found.problem is not None
    assert f"not {digest}" in found.problem


def test_unknown_key_signature_does_not_verify() -> None:
    fixture = read_fixture_signature(DATA / "unknown-cosign-key.signature")
    found = candidate(fixture.payload, fixture.annotations, VALID_DIGEST)
    assert found is not None and found.problem is None
    key = load_key_file("k", DATA / "cosign.pub")
    assert not key.verifies(found.signed, found.signature, found.material)


def test_base64_with_line_breaks_is_read() -> None:
    signer = Signer.p256()
    payload = simplesigning_payload("sha256:" + "a" * 64)
    text = base64.b64encode(signer.sign(payload)).decode()
    wrapped = "\n".join(text[i : i + 20] for i in range(0, len(text), 20)) + "\n"
    found = candidate(payload, {SIGNATURE_ANNOTATION: wrapped}, "sha256:" + "a" * 64)
    assert found is not None and found.problem is None
    key = parse_public_key("k", signer.public_pem(), "t")
    assert key.verifies(found.signed, found.signature, found.material)


def test_payload_checks() -> None:
    digest = "sha256:" + "b" * 64
    sig = {SIGNATURE_ANNOTATION: "AAAA"}
    wrong_type = simplesigning_payload(digest).replace(b"container image", b"other")
    assert "not a 'cosign container image signature'" in str(candidate(wrong_type, sig, digest))
    assert "not JSON" in str(candidate(b"{", sig, digest))
    assert "not base64" in str(
        candidate(simplesigning_payload(digest), {SIGNATURE_ANNOTATION: "!"}, digest)
    )
    assert candidate(simplesigning_payload(digest), {}, digest) is None


def test_signature_layers_skip_junk() -> None:
    manifest = {
        "layers": [
            {"mediaType": "x", "digest": "sha256:1", "size": 3, "annotations": {"a": "b"}},
            {"digest": 5},
            "junk",
        ]
    }
    layers = signature_layers(manifest)
    assert [(layer.digest, layer.annotations) for layer in layers] == [("sha256:1", {"a": "b"})]
    assert signature_layers([]) == []
