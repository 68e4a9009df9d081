"""Find a module's cosign signatures and decide whether they satisfy a requirement.

Discovery follows cosign 3: sigstore bundles among the referrers (the referrers API,
or its fallback tag on registries without it), then simple-signing signatures under
the tag ``sha256-<hex>.sig``. Every signature found is judged against every configured
authority, so a refusal can say what was there ("1 by another key"). What is signed is
the digest the module reference resolves to; the module blob is fetched only after.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from csi_wasm.deadline import Deadline
from csi_wasm.errors import (
    CsiWasmError,
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    SignatureRejected,
    Unavailable,
)
from csi_wasm.formats import mediatypes
from csi_wasm.reference import Reference
from csi_wasm.registry import Keychain, RegistryClient
from csi_wasm.verify import bundle, cosign
from csi_wasm.verify.candidate import Candidate, Layout
from csi_wasm.verify.keys import Authority
from csi_wasm.verify.policy import Demand, Requirement

log = logging.getLogger(__name__)

MAX_SIGNATURES = 32  # per place; more is a registry filling us with work
# A failure to fetch one of these ends the check: it is the registry's, not the artifact's.
_REGISTRY_FAILURES = (Unavailable, DeadlineExceeded, PermissionDenied)


class Artifacts(Protocol):
    """Signature artifacts of one repository (the registry, seen from the verifier)."""

    def referrers(self, digest: str) -> object | None:
        """The referrers API's index (parsed JSON); None when the registry has no such API."""

    def manifest(self, tag_or_digest: str) -> object | None:
        """A manifest (parsed JSON) by tag or digest; None when there is none."""

    def blob(self, digest: str, size: int, limit: int) -> bytes:
        """A blob, verified against its digest and size."""


class RegistryArtifacts:
    """:class:`Artifacts` through the driver's registry client, within a deadline."""

    def __init__(
        self,
        client: RegistryClient,
        reference: Reference,
        keychain: Keychain | None,
        deadline: Deadline,
    ) -> None:
        self._client = client
        self._ref = reference
        self._keychain = keychain
        self._deadline = deadline

    def referrers(self, digest: str) -> object | None:
        body = self._client.get_referrers(self._ref, digest, self._keychain, self._deadline)
        return None if body is None else _json(body)

    def manifest(self, tag_or_digest: str) -> object | None:
        if tag_or_digest.startswith("sha256:"):
            ref = self._ref.with_digest(tag_or_digest)
        else:
            ref = dataclasses.replace(self._ref, tag=tag_or_digest, digest=None)
        try:
            found = self._client.get_manifest(
                ref, self._keychain, self._deadline, mediatypes.MANIFEST_ACCEPT
            )
        except NotFound:
            return None
        return _json(found.body)

    def blob(self, digest: str, size: int, limit: int) -> bytes:
        out = io.BytesIO()
        self._client.fetch_blob(
            self._ref, digest, size, out, self._keychain, self._deadline, limit=limit
        )
        return out.getvalue()


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


@dataclass
class Findings:
    """Every signature found for one digest, and what was found that is not one."""

    candidates: list[Candidate] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    bundles_seen: bool = False
    sig_tag_seen: bool = False


def discover(
    artifacts: Artifacts, digest: str, enough: Callable[[Findings], bool] | None = None
) -> Findings:
    """Collect the signatures of ``digest``: bundles among its referrers, then its .sig tag.

    The .sig tag is not asked for when ``enough`` says the bundles already suffice (as
    cosign 3 falls back to it only when they do not).
    """
    found = Findings()
    _bundles(artifacts, digest, found)
    if enough is None or not enough(found):
        _simple_signatures(artifacts, digest, found)
    return found


def _bundles(artifacts: Artifacts, digest: str, found: Findings) -> None:
    index = artifacts.referrers(digest)
    if index is None:
        index = artifacts.manifest(bundle.fallback_tag(digest))
    for child in bundle.referrer_digests(index)[:MAX_SIGNATURES]:
        referrer = bundle.read_referrer(_tolerant(artifacts.manifest, child, found), digest)
        if referrer.unsupported is not None:
            found.unsupported.append(referrer.unsupported)
        for layer in referrer.bundles:
            found.bundles_seen = True
            data = _tolerant_blob(artifacts, layer, bundle.MAX_BUNDLE_BYTES, found)
            if data is not None:
                found.candidates.extend(bundle.candidates(data, digest))


def _simple_signatures(artifacts: Artifacts, digest: str, found: Findings) -> None:
    manifest = artifacts.manifest(cosign.signature_tag(digest))
    if manifest is None:
        return
    found.sig_tag_seen = True
    for layer in cosign.signature_layers(manifest)[:MAX_SIGNATURES]:
        if layer.media_type != cosign.MEDIA_TYPE:
            found.unsupported.append(f"a {layer.media_type[:80] or 'typeless'} layer")
            continue
        payload = _tolerant_blob(artifacts, layer, cosign.MAX_PAYLOAD_BYTES, found)
        if payload is None:
            continue
        signature = cosign.candidate(payload, layer.annotations, digest)
        if signature is None:
            found.unsupported.append("a payload without a signature annotation")
        else:
            found.candidates.append(signature)


def _tolerant(fetch: Callable[[str], object | None], what: str, found: Findings) -> object | None:
    """A referrer manifest, or None (noted) when it is broken: one bad artifact is no outage."""
    try:
        return fetch(what)
    except _REGISTRY_FAILURES:
        raise
    except CsiWasmError as error:
        found.unsupported.append(f"an unreadable referrer ({error.message[:120]})")
        return None


def _tolerant_blob(
    artifacts: Artifacts, layer: cosign.SignatureLayer, limit: int, found: Findings
) -> bytes | None:
    if layer.size > limit:
        found.unsupported.append(f"a {layer.size}-byte signature blob (over {limit})")
        return None
    try:
        return artifacts.blob(layer.digest, layer.size, limit)
    except _REGISTRY_FAILURES:
        raise
    except CsiWasmError as error:
        found.unsupported.append(f"an unreadable signature blob ({error.message[:120]})")
        return None


@dataclass(frozen=True)
class Outcome:
    """What a check concluded: who signed, and a warning for unmet ``warn`` demands."""

    verified: Mapping[str, Layout]  # key name -> layout of one valid signature by it
    warning: str | None = None

    @property
    def layout(self) -> str:
        return next(iter(self.verified.values())).value if self.verified else "none"


def demands_met(requirement: Requirement, verified: set[str] | frozenset[str]) -> bool:
    """True when every demand has a signature by one of its keys."""
    return all(any(k in verified for k in d.keys) for d in requirement.demands)


def sufficient(
    authorities: Mapping[str, Authority], requirement: Requirement
) -> Callable[[Findings], bool]:
    """For :func:`discover`: do the signatures found so far meet every demand?"""

    def enough(findings: Findings) -> bool:
        try:
            outcome = judge(findings, authorities, requirement, "")
        except SignatureRejected:
            return False
        return outcome.warning is None

    return enough


def judge(
    findings: Findings,
    authorities: Mapping[str, Authority],
    requirement: Requirement,
    where: str,
) -> Outcome:
    """Check every signature with every authority; raise if an enforced demand is unmet."""
    valid: dict[str, Layout] = {}
    replays = 0
    by_signature: list[set[str]] = []
    for candidate in findings.candidates:
        signers = {
            name
            for name, authority in authorities.items()
            if candidate.signature
            and authority.verifies(candidate.signed, candidate.signature, candidate.material)
        }
        if candidate.problem is not None:
            replays += bool(signers)
            if signers:
                log.info(
                    "signature refused",
                    extra={"fields": {"module": where, "problem": candidate.problem}},
                )
            signers = set()
        by_signature.append(signers)
        for name in signers:
            valid.setdefault(name, candidate.layout)
    failures = [
        (demand, _explain(demand, findings, by_signature, replays))
        for demand in requirement.demands
        if not any(k in valid for k in demand.keys)
    ]
    enforced = [text for demand, text in failures if demand.enforce]
    if enforced:
        raise SignatureRejected(f"{where}: {'; and '.join(enforced)}")
    warning = "; and ".join(text for _, text in failures) or None
    return Outcome(valid, f"{where}: {warning}" if warning else None)


def _explain(demand: Demand, findings: Findings, by_signature: list[set[str]], replays: int) -> str:
    """'0 of 2 signatures verify with key team-a; 1 by another key; no bundle found'."""
    total = len(findings.candidates)
    keys = ", ".join(demand.keys)
    noun = "signature verifies" if total == 1 else "signatures verify"
    parts = [
        f"{demand.origin} needs a signature by {'key' if len(demand.keys) == 1 else 'one of keys'} "
        f"{keys}: 0 of {total} {noun} with {'it' if len(demand.keys) == 1 else 'them'}"
    ]
    others = sum(1 for signers in by_signature if signers)
    if others:
        parts.append(f"{others} by another key")
    if replays:
        parts.append(f"{replays} by a trusted key but for another module or payload")
    broken = [c.problem for c in findings.candidates if not c.signature and c.problem]
    invalid = total - others - replays - len(broken)
    if invalid:
        parts.append(f"{invalid} by no configured key or not valid")
    parts.extend(f"one where {problem}" for problem in broken)
    parts.extend(findings.unsupported)
    if not findings.bundles_seen:
        parts.append("no bundle found")
    if not findings.sig_tag_seen:
        parts.append("no .sig tag found")
    return "; ".join(parts)
