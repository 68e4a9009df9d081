"""Tests of csi_wasm.verify.bundle (layout B): DSSE, in-toto subjects, referrers."""

from __future__ import annotations

import json

from support.cosign import Signer, make_bundle, statement

from csi_wasm.verify.bundle import candidates, pae, read_referrer, referrer_digests
from csi_wasm.verify.keys import parse_public_key

DIGEST = "sha256:" + "c" * 64


def test_pae_matches_the_dsse_spec_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_a_bundle_signed_for_this_digest_verifies() -> None:
    signer = Signer.p384()
    (found,) = candidates(make_bundle([signer], statement(DIGEST)), DIGEST)
    assert found.problem is None
    key = parse_public_key("k", signer.public_pem(), "t")
    assert key.verifies(found.signed, found.signature, found.material)


def test_each_dsse_signature_is_a_candidate() -> None:
    found = candidates(make_bundle([Signer.p256(), Signer.rsa3072()], statement(DIGEST)), DIGEST)
    assert len(found) == 2


def test_a_bundle_for_another_digest_has_a_problem() -> None:
    (found,) = candidates(make_bundle([Signer.p256()], statement("sha256:" + "d" * 64)), DIGEST)
    assert found.problem == f"it signs sha256:{'d' * 64}, not {DIGEST}"


def test_unsupported_bundles_say_why() -> None:
    message = json.dumps({"mediaType": "x", "messageSignature": {}}).encode()
    assert "message signature" in str(candidates(message, DIGEST)[0].problem)
    assert "not JSON" in str(candidates(b"{", DIGEST)[0].problem)
    other = make_bundle([Signer.p256()], statement(DIGEST), payload_type="text/plain")
    assert "not an in-toto statement" in str(candidates(other, DIGEST)[0].problem)


def test_referrers() -> None:
    bundle_layer = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "digest": "sha256:1",
        "size": 1,
    }
    manifest = {"subject": {"digest": DIGEST}, "layers": [bundle_layer]}
    assert len(read_referrer(manifest, DIGEST).bundles) == 1
    assert read_referrer(manifest, "sha256:" + "e" * 64).bundles == []
    # artifactType says bundle, the layer says otherwise: the layer decides
    lying = {
        **manifest,
        "artifactType": bundle_layer["mediaType"],
        "layers": [{**bundle_layer, "mediaType": "application/octet-stream"}],
    }
    assert read_referrer(lying, DIGEST).bundles == []
    notation = {
        "subject": {"digest": DIGEST},
        "artifactType": "application/vnd.cncf.notary.signature",
        "layers": [{"mediaType": "application/jose+json", "digest": "sha256:2", "size": 1}],
    }
    assert read_referrer(notation, DIGEST).unsupported == "a notation signature (unsupported)"
    assert referrer_digests({"manifests": [{"digest": "sha256:1"}, {}]}) == ["sha256:1"]
    assert referrer_digests(None) == []
