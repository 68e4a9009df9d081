"""Layout B: cosign 3's sigstore bundles, attached to the module as OCI referrers.

A referrer is a manifest whose ``subject`` is the signed manifest and whose layer is a
sigstore bundle (media type ``application/vnd.dev.sigstore.bundle.v0.3+json``). The
bundle's DSSE envelope carries an in-toto statement; its ``subject[].digest.sha256``
names the signed manifest, and the signature covers DSSE's pre-authentication
encoding (PAE) of the payload. Referrers are listed by the registry's referrers API,
or, on registries without one, by the index under the fallback tag ``sha256-<hex>``.
Each candidate manifest's layer type is read: an index's ``artifactType`` is only a hint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from csi_wasm.verify.candidate import Candidate, Layout, decode_base64
from csi_wasm.verify.cosign import SignatureLayer, signature_layers
from csi_wasm.verify.keys import Material

MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_TYPE_PREFIX = "application/vnd.dev.sigstore.bundle"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPES = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)
NOTATION_TYPES = frozenset(
    {"application/vnd.cncf.notary.signature", "application/jose+json", "application/cose"}
)
MAX_BUNDLE_BYTES = 1024 * 1024


def fallback_tag(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>``, the referrers tag schema of OCI 1.1."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def referrer_digests(index: object) -> list[str]:
    """The manifest digests an index of referrers lists (API answer or fallback tag)."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    return [
        m["digest"]
        for m in (manifests if isinstance(manifests, list) else [])
        if isinstance(m, dict) and isinstance(m.get("digest"), str)
    ]


@dataclass(frozen=True)
class Referrer:
    """What a referrer manifest holds for a subject: bundles, or something unsupported."""

    bundles: list[SignatureLayer]
    unsupported: str | None  # "a notation signature", ...


def read_referrer(manifest: object, subject: str) -> Referrer:
    """Sort a referrer manifest; one whose subject is another manifest holds nothing."""
    if not isinstance(manifest, dict):
        return Referrer([], None)
    declared = manifest.get("subject")
    if not isinstance(declared, dict) or declared.get("digest") != subject:
        return Referrer([], None)
    layers = signature_layers(manifest)
    bundles = [layer for layer in layers if layer.media_type == MEDIA_TYPE]
    config = manifest.get("config")
    kinds = {str(manifest.get("artifactType", ""))}
    kinds |= {layer.media_type for layer in layers}
    if isinstance(config, dict):
        kinds.add(str(config.get("mediaType", "")))
    unsupported = None
    if not bundles and kinds & NOTATION_TYPES:
        unsupported = "a notation signature (unsupported)"
    elif not bundles and any(k.startswith(BUNDLE_TYPE_PREFIX) for k in kinds):
        unsupported = "a sigstore bundle of an unsupported version"
    return Referrer(bundles, unsupported)


def candidates(bundle: bytes, digest: str) -> list[Candidate]:
    """The DSSE signatures of one bundle, judged against ``digest``."""
    try:
        document = json.loads(bundle)
    except (ValueError, RecursionError):
        return [_broken("the bundle is not JSON")]
    if not isinstance(document, dict):
        return [_broken("the bundle is not a JSON object")]
    material = _material(document.get("verificationMaterial"))
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        kind = "a message signature" if "messageSignature" in document else "no DSSE envelope"
        return [_broken(f"the bundle holds {kind}, not a DSSE envelope (unsupported)")]
    payload_type = envelope.get("payloadType")
    payload = decode_base64(str(envelope.get("payload", "")))
    signatures = envelope.get("signatures")
    if not isinstance(payload_type, str) or payload is None or not isinstance(signatures, list):
        return [_broken("its DSSE envelope is malformed")]
    signed = pae(payload_type, payload)
    problem = _statement_problem(payload_type, payload, digest)
    found = []
    for entry in signatures:
        signature = decode_base64(str(entry.get("sig", ""))) if isinstance(entry, dict) else None
        found.append(
            Candidate(
                Layout.BUNDLE,
                signed,
                signature or b"",
                material,
                problem if signature is not None else "its signature is not base64",
            )
        )
    return found or [_broken("its DSSE envelope has no signature")]


def _broken(problem: str) -> Candidate:
    return Candidate(Layout.BUNDLE, b"", b"", Material(), problem)


def _material(value: object) -> Material:
    """The certificate a keyless bundle carries (unused by keys; kept for Fulcio)."""
    if not isinstance(value, dict):
        return Material()
    certificate = value.get("certificate")
    raw = certificate.get("rawBytes") if isinstance(certificate, dict) else None
    return Material(raw if isinstance(raw, str) else None)


def _statement_problem(payload_type: str, payload: bytes, digest: str) -> str | None:
    """Why the statement is not about ``digest`` (None: it is)."""
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        return f"its payload type is {payload_type[:80]!r}, not an in-toto statement"
    try:
        statement = json.loads(payload)
    except (ValueError, RecursionError):
        return "its in-toto statement is not JSON"
    if not isinstance(statement, dict) or statement.get("_type") not in STATEMENT_TYPES:
        return "its payload is not an in-toto statement"
    subjects = statement.get("subject")
    named = [
        s["digest"].get("sha256")
        for s in (subjects if isinstance(subjects, list) else [])
        if isinstance(s, dict) and isinstance(s.get("digest"), dict)
    ]
    hexdigest = digest.removeprefix("sha256:")
    if hexdigest in named:
        return None
    shown = next((f"sha256:{n}"[:80] for n in named if isinstance(n, str)), "no sha256 digest")
    return f"it signs {shown}, not {digest}"
