"""Layout A: cosign's simple-signing signatures under the tag ``sha256-<hex>.sig``.

The tag's manifest has one layer per signature. Each layer's blob is the signed
payload, a JSON document naming the signed manifest digest
(``critical.image.docker-manifest-digest``) and cosign's type constant; the layer
annotation ``dev.cosignproject.cosign/signature`` holds the base64 signature over the
payload's exact bytes. ``critical.identity.docker-reference`` is not checked, as
cosign does not check it either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from csi_wasm.verify.candidate import Candidate, Layout, decode_base64
from csi_wasm.verify.keys import Material

MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
SIGNATURE_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 256 * 1024


def signature_tag(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>.sig``."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}.sig"


@dataclass(frozen=True)
class SignatureLayer:
    """One layer of a ``.sig`` manifest: where the payload is and what came with it."""

    digest: str
    size: int
    media_type: str
    annotations: Mapping[str, str]


def signature_layers(manifest: object) -> list[SignatureLayer]:
    """The layers of a parsed ``.sig`` manifest (any media type: the caller sorts them)."""
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    found = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
            continue
        annotations = layer.get("annotations")
        found.append(
            SignatureLayer(
                digest,
                size,
                str(layer.get("mediaType", "")),
                {
                    str(k): v
                    for k, v in (annotations.items() if isinstance(annotations, dict) else ())
                    if isinstance(v, str)
                },
            )
        )
    return found


def candidate(payload: bytes, annotations: Mapping[str, str], digest: str) -> Candidate | None:
    """The signature of one layer, judged against ``digest``; None if it carries none."""
    text = annotations.get(SIGNATURE_ANNOTATION)
    if text is None:
        return None
    signature = decode_base64(text)
    material = Material(annotations.get(CERTIFICATE_ANNOTATION), annotations.get(CHAIN_ANNOTATION))
    problem = _payload_problem(payload, digest)
    if signature is None:
        problem = "its signature annotation is not base64"
    return Candidate(Layout.SIMPLESIGNING, payload, signature or b"", material, problem)


def _payload_problem(payload: bytes, digest: str) -> str | None:
    """Why the payload is not a cosign signature of ``digest`` (None: it is)."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return "its payload is not JSON"
    critical = document.get("critical") if isinstance(document, dict) else None
    if not isinstance(critical, dict):
        return "its payload has no 'critical' section"
    if critical.get("type") != SIGNATURE_TYPE:
        return f"its payload is not a {SIGNATURE_TYPE!r}"
    image = critical.get("image")
    signed = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if signed != digest:
        shown = signed[:80] if isinstance(signed, str) else "no digest"
        return f"it signs {shown}, not {digest}"
    return None
