"""The signature gate of the pull path: what a request needs, and whether it has it.

The puller asks three things: what a request requires (:meth:`SignatureGate.requirement`,
from the node's policy on the name the pod wrote, tightened by its attributes); whether
verdicts kept in the cache already satisfy it for a manifest digest (no registry call);
and, when they do not, to check the signatures in the registry before the module blob
is downloaded (:meth:`SignatureGate.check`). Successful verdicts are kept per (manifest
digest, key fingerprint) once the module is stored (:meth:`SignatureGate.remember`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from csi_wasm.attributes import HttpSource, ModuleRequest
from csi_wasm.cache.store import ModuleStore
from csi_wasm.deadline import Deadline
from csi_wasm.errors import CsiWasmError, SignatureRejected
from csi_wasm.reference import Reference
from csi_wasm.registry import Keychain, RegistryClient
from csi_wasm.verify.keys import Authority
from csi_wasm.verify.policy import NO_REQUIREMENT, Policy, Requirement
from csi_wasm.verify.signatures import (
    Outcome,
    RegistryArtifacts,
    discover,
    judge,
    sufficient,
)

log = logging.getLogger(__name__)


class SignatureObserver(Protocol):
    """Told about each verification that went to the registry (metrics)."""

    def signature_checked(self, result: str, layout: str) -> None: ...


class SignatureGate:
    def __init__(
        self,
        authorities: Mapping[str, Authority],
        policy: Policy,
        store: ModuleStore,
        registry: RegistryClient,
        observer: SignatureObserver | None = None,
    ) -> None:
        self._authorities = dict(authorities)
        self._policy = policy
        self._store = store
        self._registry = registry
        self._observer = observer

    def requirement(self, request: ModuleRequest) -> Requirement:
        """What ``request`` needs; INVALID_ARGUMENT/FAILED_PRECONDITION as the policy says.

        An https URL has no signature to check: it is refused where one is enforced.
        """
        source = request.source
        name = _url_name(source.url) if isinstance(source, HttpSource) else source.name
        needed = self._policy.requirement(
            name, required=request.verify_required, pod_keys=request.verify_keys
        )
        if isinstance(source, HttpSource) and needed.enforced:
            raise SignatureRejected(
                f"{name} must carry a verified signature, but a module fetched by URL "
                "has none to check; publish it to an OCI registry and sign it with cosign"
            )
        return needed

    def satisfied(self, manifest_digest: str | None, requirement: Requirement) -> bool:
        """True when kept verdicts meet every demand for this digest (a cache read only)."""
        if not requirement:
            return True
        if manifest_digest is None:
            return False
        verified = {
            name
            for name in requirement.key_names
            if self._store.has_verdict(manifest_digest, self._authorities[name].fingerprint)
        }
        return all(any(k in verified for k in d.keys) for d in requirement.demands)

    def check(
        self,
        route: Reference,
        shown: str,
        digest: str,
        keychain: Keychain | None,
        deadline: Deadline,
        requirement: Requirement,
    ) -> Outcome:
        """Fetch and judge the signatures of ``digest`` from ``route``.

        Raises SignatureRejected when an enforced demand is unmet; registry failures
        (UNAVAILABLE, ...) propagate as they are.
        """
        artifacts = RegistryArtifacts(self._registry, route, keychain, deadline)
        enough = sufficient(self._authorities, requirement)
        try:
            findings = discover(artifacts, digest, enough)
            outcome = judge(findings, self._authorities, requirement, shown)
        except SignatureRejected:
            self._observe("rejected", "none")
            raise
        except CsiWasmError:
            self._observe("error", "none")
            raise
        self._observe("warned" if outcome.warning else "verified", outcome.layout)
        if outcome.warning:
            log.warning(
                "signature check failed, served under a warn rule",
                extra={"fields": {"module": shown, "problem": outcome.warning}},
            )
        return outcome

    def remember(self, digest: str, outcome: Outcome, module_hex: str) -> None:
        for name in outcome.verified:
            self._store.record_verdict(digest, self._authorities[name].fingerprint, module_hex)

    def _observe(self, result: str, layout: str) -> None:
        if self._observer is not None:
            self._observer.signature_checked(result, layout)


def _url_name(url: str) -> str:
    """``https://host/path?q`` -> ``host/path``: what a policy rule matches for a URL."""
    parts = urlsplit(url)
    return f"{parts.netloc.rsplit('@', 1)[-1]}{parts.path}".rstrip("/")


__all__ = ["NO_REQUIREMENT", "SignatureGate", "SignatureObserver"]
