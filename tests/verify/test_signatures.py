"""Tests of csi_wasm.verify.signatures: discovery in a real registry, and the verdict.

Real cosign output (containers/image's fixtures, pushed as cosign 2 did) and signatures
made here in both layouts; the registry (docker-registry) has no referrers API, so
layout B is found through the fallback tag, as cosign 3 leaves it there.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Mapping

import pytest
from support.cosign import (
    DATA,
    SIGNATURE_ANNOTATION,
    SignatureLayer,
    Signer,
    make_bundle,
    push_bundle_referrer,
    push_fixture,
    push_signature_tag,
    read_fixture_signature,
    signed_layer,
    simplesigning_payload,
    statement,
)
from support.oci import PushedModule, push_manifest, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.deadline import Deadline
from csi_wasm.errors import SignatureRejected
from csi_wasm.reference import parse_reference
from csi_wasm.registry import RegistryClient, RegistryOptions
from csi_wasm.verify.cosign import signature_tag as cosign_tag
from csi_wasm.verify.keys import Authority, PublicKey, load_key_file, parse_public_key
from csi_wasm.verify.policy import Demand, Requirement
from csi_wasm.verify.signatures import Outcome, RegistryArtifacts, discover, judge, sufficient

P256, P384, RSA = Signer.p256(), Signer.p384(), Signer.rsa3072()


@pytest.fixture
def client(registry: Registry) -> Iterator[RegistryClient]:
    with RegistryClient(RegistryOptions(insecure_registries=frozenset({registry.host}))) as c:
        yield c


def key(name: str, signer: Signer) -> PublicKey:
    return parse_public_key(name, signer.public_pem(), name)


KEYS: Mapping[str, Authority] = {
    "p256": key("p256", P256),
    "p384": key("p384", P384),
    "rsa": key("rsa", RSA),
}


def needs(*keys: str, enforce: bool = True) -> Requirement:
    return Requirement((Demand(keys, enforce, "rule test/**"),))


def check(
    client: RegistryClient,
    registry: Registry,
    repo: str,
    digest: str,
    requirement: Requirement,
    authorities: Mapping[str, Authority] = KEYS,
) -> Outcome:
    ref = parse_reference(f"{registry.host}/{repo}:any")
    artifacts = RegistryArtifacts(client, ref, None, Deadline.after(30))
    return judge(discover(artifacts, digest), authorities, requirement, f"{registry.host}/{repo}")


def module(registry: Registry, repo: str, tag: str = "v1", seed: str = "m") -> PushedModule:
    return push_wasm_artifact(registry, repo, tag, make_module(300, seed))


# -- real cosign output -----------------------------------------------------------------

COSIGN_PUB = {"release": load_key_file("release", DATA / "cosign.pub")}


@pytest.mark.parametrize(
    "fixture",
    [
        "dir-img-cosign-valid",
        "dir-img-cosign-valid-2",
        "dir-img-cosign-mixed",
        "dir-img-cosign-valid-with-tag",
    ],
)
def test_real_cosign_signatures_are_accepted(
    registry: Registry, client: RegistryClient, unique_repo: str, fixture: str
) -> None:
    digest, _ = push_fixture(registry, unique_repo, fixture)
    outcome = check(client, registry, unique_repo, digest, needs("release"), COSIGN_PUB)
    assert outcome.verified == {"release": outcome.verified["release"]}
    assert outcome.layout == "simplesigning"


def test_real_rekor_signature_needs_its_own_key(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    digest, _ = push_fixture(registry, unique_repo, "dir-img-cosign-key-rekor-valid")
    both = {**COSIGN_PUB, "rekor": load_key_file("rekor", DATA / "cosign2.pub")}
    assert set(check(client, registry, unique_repo, digest, needs("rekor"), both).verified) == {
        "rekor"
    }
    with pytest.raises(
        SignatureRejected, match="0 of 1 signature verifies with it; 1 by another key"
    ):
        check(client, registry, unique_repo, digest, needs("release"), both)


@pytest.mark.parametrize(
    ("fixture", "found"),
    [
        ("dir-img-cosign-modified-manifest", "1 by a trusted key but for another module"),
        ("dir-img-cosign-other-attachment", "0 of 0 signatures verify with it; a text/plain layer"),
    ],
)
def test_real_cosign_refusals(
    registry: Registry, client: RegistryClient, unique_repo: str, fixture: str, found: str
) -> None:
    digest, _ = push_fixture(registry, unique_repo, fixture)
    with pytest.raises(SignatureRejected, match=found):
        check(client, registry, unique_repo, digest, needs("release"), COSIGN_PUB)


def test_real_signature_by_an_unknown_key_is_refused(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    digest, _ = push_fixture(registry, unique_repo, "dir-img-cosign-valid")
    unknown = read_fixture_signature(DATA / "unknown-cosign-key.signature")
    push_signature_tag(
        registry,
        unique_repo,
        digest,
        [SignatureLayer(unknown.payload, unknown.annotations[SIGNATURE_ANNOTATION])],
    )
    with pytest.raises(SignatureRejected, match="0 of 1 signature verifies"):
        check(client, registry, unique_repo, digest, needs("release"), COSIGN_PUB)


# -- made here: both layouts, three key types -----------------------------------------


@pytest.mark.parametrize(("name", "signer"), [("p256", P256), ("p384", P384), ("rsa", RSA)])
def test_layout_a(
    registry: Registry, client: RegistryClient, unique_repo: str, name: str, signer: Signer
) -> None:
    pushed = module(registry, unique_repo)
    payload = simplesigning_payload(pushed.manifest_digest, pushed.reference)
    push_signature_tag(
        registry, unique_repo, pushed.manifest_digest, [signed_layer(signer, payload)]
    )
    outcome = check(client, registry, unique_repo, pushed.manifest_digest, needs(name))
    assert set(outcome.verified) == {name} and outcome.layout == "simplesigning"


@pytest.mark.parametrize(("name", "signer"), [("p256", P256), ("p384", P384), ("rsa", RSA)])
def test_layout_b_through_the_fallback_tag(
    registry: Registry, client: RegistryClient, unique_repo: str, name: str, signer: Signer
) -> None:
    pushed = module(registry, unique_repo)
    bundle = make_bundle([signer], statement(pushed.manifest_digest))
    push_bundle_referrer(registry, unique_repo, pushed.manifest_descriptor(), bundle)
    outcome = check(client, registry, unique_repo, pushed.manifest_digest, needs(name))
    assert set(outcome.verified) == {name} and outcome.layout == "bundle"
    # the registry has no referrers API: it was asked, then the fallback tag was read
    assert registry.requests_matching("GET", rf"/v2/{unique_repo}/referrers/.*", status=404) >= 1


def test_the_wrong_key_is_refused_with_what_was_found(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    pushed = module(registry, unique_repo)
    payload = simplesigning_payload(pushed.manifest_digest)
    push_signature_tag(registry, unique_repo, pushed.manifest_digest, [signed_layer(P384, payload)])
    with pytest.raises(SignatureRejected) as caught:
        check(client, registry, unique_repo, pushed.manifest_digest, needs("p256"))
    assert caught.value.message == (
        f"{registry.host}/{unique_repo}: rule test/** needs a signature by key p256: "
        "0 of 1 signature verifies with it; 1 by another key; no bundle found"
    )


def test_tampered_payload_is_refused(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    pushed = module(registry, unique_repo)
    payload = simplesigning_payload(pushed.manifest_digest)
    good = signed_layer(P256, payload)
    tampered = payload.replace(b'"optional":null', b'"optional":{"x":"y"}')
    push_signature_tag(
        registry,
        unique_repo,
        pushed.manifest_digest,
        [SignatureLayer(tampered, good.signature_b64)],
    )
    with pytest.raises(SignatureRejected, match="1 by no configured key or not valid"):
        check(client, registry, unique_repo, pushed.manifest_digest, needs("p256"))


def test_a_signature_of_another_module_replayed_here_is_refused(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    signed = module(registry, unique_repo, "signed", seed="a")
    target = module(registry, unique_repo, "target", seed="b")
    layer = signed_layer(P256, simplesigning_payload(signed.manifest_digest))
    push_signature_tag(registry, unique_repo, target.manifest_digest, [layer])
    bundle = make_bundle([P256], statement(signed.manifest_digest))
    push_bundle_referrer(registry, unique_repo, target.manifest_descriptor(), bundle)
    with pytest.raises(SignatureRejected, match="2 by a trusted key but for another module"):
        check(client, registry, unique_repo, target.manifest_digest, needs("p256"))


def test_a_moved_tag_is_not_covered_by_the_old_signature(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    old = module(registry, unique_repo, "v1", seed="old")
    push_signature_tag(
        registry,
        unique_repo,
        old.manifest_digest,
        [signed_layer(P256, simplesigning_payload(old.manifest_digest))],
    )
    new = module(registry, unique_repo, "v1", seed="new")
    with pytest.raises(SignatureRejected, match=r"0 of 0 signatures.*no \.sig tag found"):
        check(client, registry, unique_repo, new.manifest_digest, needs("p256"))


def test_one_valid_among_several_suffices(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    pushed = module(registry, unique_repo)
    payload = simplesigning_payload(pushed.manifest_digest)
    junk = SignatureLayer(payload, base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode())
    push_signature_tag(
        registry,
        unique_repo,
        pushed.manifest_digest,
        [junk, signed_layer(P384, payload), signed_layer(P256, payload)],
    )
    assert set(
        check(client, registry, unique_repo, pushed.manifest_digest, needs("p256")).verified
    ) == {"p256", "p384"}


def test_no_signature_at_all(registry: Registry, client: RegistryClient, unique_repo: str) -> None:
    pushed = module(registry, unique_repo)
    with pytest.raises(
        SignatureRejected,
        match=r"0 of 0 signatures verify with it; no bundle found; no \.sig tag found",
    ):
        check(client, registry, unique_repo, pushed.manifest_digest, needs("p256"))


def test_a_notation_signature_is_reported_as_unsupported(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    pushed = module(registry, unique_repo)
    push_bundle_referrer(
        registry,
        unique_repo,
        pushed.manifest_descriptor(),
        b'{"payload":"notation jws"}',
        layer_media_type="application/jose+json",
        artifact_type="application/vnd.cncf.notary.signature",
    )
    with pytest.raises(SignatureRejected, match="a notation signature \\(unsupported\\)"):
        check(client, registry, unique_repo, pushed.manifest_digest, needs("p256"))


def test_warn_demands_give_a_warning_instead(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    pushed = module(registry, unique_repo)
    outcome = check(
        client, registry, unique_repo, pushed.manifest_digest, needs("p256", enforce=False)
    )
    assert outcome.verified == {}
    assert outcome.warning is not None and "0 of 0 signatures" in outcome.warning


def test_an_index_digest_is_what_is_signed(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    child = module(registry, unique_repo, "child")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            child.manifest_descriptor({"os": "wasip1", "architecture": "wasm"}).as_dict()
        ],
    }
    index_digest = push_manifest(registry, unique_repo, "v1", index)
    push_signature_tag(
        registry,
        unique_repo,
        index_digest,
        [signed_layer(P256, simplesigning_payload(index_digest))],
    )
    assert check(client, registry, unique_repo, index_digest, needs("p256")).verified
    with pytest.raises(SignatureRejected):
        check(client, registry, unique_repo, child.manifest_digest, needs("p256"))


class ReferrersApi:
    """A registry with the referrers API, at the :class:`Artifacts` seam (the test registry
    has none): manifests and blobs by digest, and who asked for what."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.manifests: dict[str, object] = {}
        self.blobs: dict[str, bytes] = {}
        self.listed: list[dict[str, str]] = []
        self.asked: list[str] = []

    def attach(self, manifest: dict[str, object], blob: bytes, artifact_type: str) -> None:
        digest = "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
        self.manifests[digest] = manifest
        layer = manifest["layers"][0]  # type: ignore[index]
        self.blobs[layer["digest"]] = blob
        self.listed.append({"digest": digest, "artifactType": artifact_type})

    def referrers(self, digest: str) -> object | None:
        self.asked.append(f"referrers {digest}")
        return {"manifests": self.listed} if digest == self.subject else {"manifests": []}

    def manifest(self, tag_or_digest: str) -> object | None:
        self.asked.append(f"manifest {tag_or_digest}")
        return self.manifests.get(tag_or_digest)

    def blob(self, digest: str, size: int, limit: int) -> bytes:
        self.asked.append(f"blob {digest}")
        return self.blobs[digest]


def referrer(subject: str, blob: bytes, media_type: str, artifact_type: str) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "artifactType": artifact_type,
        "layers": [
            {
                "mediaType": media_type,
                "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
                "size": len(blob),
            }
        ],
        "subject": {"digest": subject},
    }


def test_the_referrers_api_is_used_when_the_registry_has_it() -> None:
    digest = "sha256:" + "f" * 64
    api = ReferrersApi(digest)
    bundle = make_bundle([P256], statement(digest))
    bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json"
    # the index claims a bundle, the manifest's layer is not one: the layer decides
    decoy = referrer(digest, b"not a bundle", "application/octet-stream", bundle_type)
    api.attach(decoy, b"not a bundle", bundle_type)
    api.attach(referrer(digest, bundle, bundle_type, bundle_type), bundle, bundle_type)
    found = discover(api, digest, sufficient(KEYS, needs("p256")))
    outcome = judge(found, KEYS, needs("p256"), "m")
    assert set(outcome.verified) == {"p256"} and outcome.layout == "bundle"
    assert not any(a.startswith("manifest sha256-") for a in api.asked)  # no fallback tag
    assert f"manifest {cosign_tag(digest)}" not in api.asked  # the bundle sufficed
    assert len([a for a in api.asked if a.startswith("blob")]) == 1


def test_a_signature_annotation_with_line_breaks_verifies(
    registry: Registry, client: RegistryClient, unique_repo: str
) -> None:
    pushed = module(registry, unique_repo)
    payload = simplesigning_payload(pushed.manifest_digest)
    text = signed_layer(RSA, payload).signature_b64
    wrapped = "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "\n"
    push_signature_tag(
        registry, unique_repo, pushed.manifest_digest, [SignatureLayer(payload, wrapped)]
    )
    assert set(
        check(client, registry, unique_repo, pushed.manifest_digest, needs("rsa")).verified
    ) == {"rsa"}
