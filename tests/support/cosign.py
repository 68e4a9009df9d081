"""Cosign signatures for tests: real ones from disk, and ones made here in cosign's format.

Real ones: ``tests/data/cosign/`` holds signatures the ``cosign`` binary made, from
containers/image's fixtures (see its README). :func:`read_fixture_signature` reads
their on-disk form; :func:`push_fixture` rebuilds in a registry what cosign pushed.

Made here (with ``cryptography``, independent of ``csi_wasm.verify``):

* layout A (cosign <= 2): :func:`simplesigning_payload`, :func:`push_signature_tag`;
* layout B (cosign >= 3): :func:`make_bundle`, :func:`push_bundle_referrer` (the
  referrer manifest, listed by the fallback tag ``sha256-<hex>`` as on registries
  without the referrers API, such as the test registry).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from support.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    RegistryLike,
    get_manifest,
    push_blob,
    push_manifest,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "cosign"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IN_TOTO = "application/vnd.in-toto+json"


# -- keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """A private key and how cosign signs with it."""

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def p256(cls) -> Signer:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def p384(cls) -> Signer:
        return cls(ec.generate_private_key(ec.SECP384R1()))

    @classmethod
    def rsa3072(cls) -> Signer:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=3072))

    def public_pem(self) -> bytes:
        """As ``cosign.pub``: PEM SubjectPublicKeyInfo."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
        """ECDSA (ASN.1 DER) with the curve's hash, or RSA PKCS#1 v1.5 with SHA-256."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), algorithm or hashes.SHA256())
        if algorithm is None:
            algorithm = hashes.SHA384() if self.key.curve.key_size == 384 else hashes.SHA256()
        return self.key.sign(data, ec.ECDSA(algorithm))

    def write_public(self, path: Path) -> Path:
        path.write_bytes(self.public_pem())
        return path


# -- layout A: simple signing under sha256-<hex>.sig ----------------------------------


def simplesigning_payload(digest: str, reference: str = "example.com/module") -> bytes:
    """The payload ``cosign sign`` writes (Go's json.Marshal: compact, this key order)."""
    document = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignatureLayer:
    payload: bytes
    signature_b64: str
    media_type: str = SIMPLESIGNING
    extra_annotations: tuple[tuple[str, str], ...] = ()


def signed_layer(signer: Signer, payload: bytes) -> SignatureLayer:
    return SignatureLayer(payload, base64.b64encode(signer.sign(payload)).decode())


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def push_signature_tag(
    registry: RegistryLike, repo: str, signed_digest: str, layers: Sequence[SignatureLayer]
) -> str:
    """Push a ``.sig`` manifest with one layer per signature, as cosign 2 does."""
    config = push_blob(registry, repo, b'{"architecture":"","os":""}', OCI_CONFIG)
    descriptors = []
    for layer in layers:
        blob = push_blob(registry, repo, layer.payload, layer.media_type)
        annotations = {SIGNATURE_ANNOTATION: layer.signature_b64, **dict(layer.extra_annotations)}
        descriptors.append(Descriptor(layer.media_type, blob.digest, blob.size, annotations))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.as_dict(),
        "layers": [d.as_dict() for d in descriptors],
    }
    return push_manifest(registry, repo, signature_tag(signed_digest), manifest)


# -- layout B: a sigstore bundle in a referrer -----------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 " + b" ".join(
        [str(len(kind)).encode(), kind, str(len(payload)).encode(), payload]
    )


def statement(digest: str, name: str = "example.com/module") -> bytes:
    """The in-toto statement cosign 3 signs for an image."""
    document = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def make_bundle(signers: Sequence[Signer], payload: bytes, *, payload_type: str = IN_TOTO) -> bytes:
    """A sigstore bundle v0.3 with a DSSE envelope signed by each of ``signers``."""
    signed = pae(payload_type, payload)
    document: dict[str, Any] = {
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [
                {"sig": base64.b64encode(s.sign(signed)).decode(), "keyid": ""} for s in signers
            ],
        },
    }
    return json.dumps(document).encode()


def push_bundle_referrer(
    registry: RegistryLike,
    repo: str,
    subject: Descriptor,
    bundle: bytes,
    *,
    layer_media_type: str = BUNDLE_V03,
    artifact_type: str = BUNDLE_V03,
) -> str:
    """Push a referrer manifest holding ``bundle`` and list it under the fallback tag."""
    empty = push_blob(registry, repo, b"{}", OCI_EMPTY)
    layer = push_blob(registry, repo, bundle, layer_media_type)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.as_dict(),
        "layers": [layer.as_dict()],
        "subject": subject.as_dict(),
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = push_manifest(registry, repo, hashlib.sha256(body).hexdigest()[:20], body)
    add_to_fallback_index(
        registry, repo, subject.digest, Descriptor(OCI_MANIFEST, digest, len(body)), artifact_type
    )
    return digest


def add_to_fallback_index(
    registry: RegistryLike, repo: str, subject: str, entry: Descriptor, artifact_type: str
) -> None:
    """Add a referrer to the OCI 1.1 fallback index ``sha256-<hex>`` (as cosign does)."""
    tag = subject.replace(":", "-")
    existing = get_manifest(registry, repo, tag, OCI_INDEX)
    manifests = existing.json()["manifests"] if existing.status_code == 200 else []
    manifests.append({**entry.as_dict(), "artifactType": artifact_type})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    push_manifest(registry, repo, tag, index)


# -- real cosign output ----------------------------------------------------------------


@dataclass(frozen=True)
class FixtureSignature:
    """One signature layer as containers/image stores it: media type, payload, annotations."""

    media_type: str
    payload: bytes
    annotations: dict[str, str]


def read_fixture_signature(path: Path) -> FixtureSignature:
    raw = path.read_bytes()
    prefix = b"\x00sigstore-json\n"
    assert raw.startswith(prefix), f"{path} is not containers/image's signature form"
    document = json.loads(raw[len(prefix) :])
    return FixtureSignature(
        document["mimeType"], base64.b64decode(document["payload"]), document["annotations"]
    )


def push_fixture(registry: Any, repo: str, name: str, *, tag: str = "signed") -> tuple[str, bytes]:
    """Push ``tests/data/cosign/<name>``: its exact manifest bytes and its signatures.

    The manifest names a container image whose blobs are not in the fixture, and the
    registry refuses a manifest whose blobs it lacks: placeholder files are planted in
    the registry's storage for them (:meth:`Registry.plant_blob`). Only the manifest's
    bytes are signed, so they must be the fixture's own. Returns (digest, manifest).
    """
    directory = DATA / name
    body = (directory / "manifest.json").read_bytes()
    manifest = json.loads(body)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        registry.plant_blob(repo, descriptor["digest"], b"not the real blob")
    digest = push_manifest(registry, repo, tag, body)
    layers = [read_fixture_signature(path) for path in sorted(directory.glob("signature-*"))]
    push_signature_tag(
        registry,
        repo,
        digest,
        [
            SignatureLayer(
                s.payload,
                s.annotations.get(SIGNATURE_ANNOTATION, ""),
                s.media_type,
                tuple((k, v) for k, v in s.annotations.items() if k != SIGNATURE_ANNOTATION),
            )
            for s in layers
        ],
    )
    return digest, body
