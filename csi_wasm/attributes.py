"""Volume attributes: what a pod asks for, validated into a :class:`ModuleRequest`.

The names mirror Istio's WasmPlugin fields (``url``, ``sha256``, ``imagePullPolicy``)
so users can copy values across.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from csi_wasm.cache.store import is_sha256_hex
from csi_wasm.errors import InvalidArgument
from csi_wasm.reference import Reference, parse_reference
from csi_wasm.registry.http_source import display_url
from csi_wasm.verify.abi import Abi

URL = "url"
SHA256 = "sha256"
PULL_POLICY = "imagePullPolicy"
VERIFY = "verify"  # "required": the module must carry a verified signature
VERIFY_KEYS = "verifyKeys"  # "a,b": one of these --verify-key names must have signed it
ABI = "abi"
ACCEPTED_KEYS = (URL, SHA256, PULL_POLICY, VERIFY, VERIFY_KEYS, ABI)
KUBELET_PREFIX = "csi.storage.k8s.io/"

POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"


class PullPolicy(enum.Enum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"


@dataclass(frozen=True)
class HttpSource:
    """A module served over plain HTTP(S); needs a sha256."""

    url: str

    def __str__(self) -> str:
        return self.url


ModuleSource = Reference | HttpSource


@dataclass(frozen=True)
class ModuleRequest:
    source: ModuleSource
    sha256: str | None  # lowercase hex, no algorithm prefix
    pull_policy: PullPolicy
    verify_required: bool = False  # pod attributes only ever add signature demands
    verify_keys: tuple[str, ...] = ()
    abi: Abi | None = None  # None: the node's --default-abi


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else ""


def pod_info(volume_context: Mapping[str, str]) -> PodInfo:
    return PodInfo(
        namespace=volume_context.get(POD_NAMESPACE, ""),
        name=volume_context.get(POD_NAME, ""),
        uid=volume_context.get(POD_UID, ""),
    )


def parse_attributes(volume_context: Mapping[str, str]) -> ModuleRequest:
    """Validate a NodePublishVolume volume_context; INVALID_ARGUMENT on anything off."""
    unknown = sorted(
        key
        for key in volume_context
        if key not in ACCEPTED_KEYS and not key.startswith(KUBELET_PREFIX)
    )
    if unknown:
        raise InvalidArgument(
            f"unknown volume attribute(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(ACCEPTED_KEYS)}"
        )
    url = volume_context.get(URL, "").strip()
    if not url:
        raise InvalidArgument(
            "volume attribute 'url' is required, e.g. url: oci://ghcr.io/acme/filter:v1"
        )
    source = parse_source(url)
    sha256 = _parse_sha256(volume_context.get(SHA256, ""))
    if isinstance(source, HttpSource) and sha256 is None:
        raise InvalidArgument(
            f"url {display_url(url)!r} is fetched over HTTP(S), so volume attribute 'sha256' "
            "is required (the module's sha256 in hex)"
        )
    return ModuleRequest(
        source,
        sha256,
        _parse_policy(volume_context.get(PULL_POLICY, ""), source),
        *_parse_verify(volume_context),
        _parse_abi(volume_context.get(ABI, "")),
    )


CATALOG = "catalog"
NODE_CATALOG = "node"
CATALOGS = (NODE_CATALOG,)


def parse_catalog(volume_context: Mapping[str, str]) -> str | None:
    """The catalog a volume asks for (``catalog: node``); None when it asks for a module.

    A catalog volume shows every module of the node's catalog (CONTRACT.md §10), so
    it takes none of a module's attributes; INVALID_ARGUMENT otherwise.
    """
    if CATALOG not in volume_context:
        return None
    clashing = [
        key for key in volume_context if key != CATALOG and not key.startswith(KUBELET_PREFIX)
    ]
    if clashing:
        raise InvalidArgument(
            f"volume attribute 'catalog' excludes {', '.join(map(repr, sorted(clashing)))}: "
            "a catalog volume shows the node catalog's modules; ask for one module with "
            "'url', or for the catalog alone"
        )
    value = volume_context[CATALOG].strip()
    if value not in CATALOGS:
        raise InvalidArgument(
            f"catalog {value[:80]!r} does not exist; the only catalog is {NODE_CATALOG!r} "
            f"(volumeAttributes: {{catalog: {NODE_CATALOG}}})"
        )
    return value


def parse_source(url: str) -> ModuleSource:
    lowered = url.lower()
    if lowered.startswith(("https://", "http://")):
        return HttpSource(url)
    if lowered.startswith("oci://"):
        return parse_reference(url[len("oci://") :])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise InvalidArgument(
            f"url {url[:200]!r} has scheme {scheme!r}; use oci://REF, a bare REF, or https://"
        )
    return parse_reference(url)


def _parse_sha256(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    hex_part = value.removeprefix("sha256:").lower()
    if not is_sha256_hex(hex_part):
        raise InvalidArgument(
            f"volume attribute 'sha256' {value[:80]!r} is not a sha256: expected 64 hex digits"
        )
    return hex_part


def _parse_verify(volume_context: Mapping[str, str]) -> tuple[bool, tuple[str, ...]]:
    """``verify`` takes only ``required``; ``verifyKeys`` is a comma-separated list of names."""
    verify = volume_context.get(VERIFY, "").strip()
    if verify not in ("", "required"):
        raise InvalidArgument(
            f"volume attribute 'verify' {verify[:40]!r} is not 'required' (the only value: "
            "a pod may ask for a signature, never waive one the node requires)"
        )
    keys = tuple(k.strip() for k in volume_context.get(VERIFY_KEYS, "").split(",") if k.strip())
    return verify == "required", keys


def _parse_abi(value: str) -> Abi | None:
    value = value.strip()
    if not value:
        return None
    try:
        return parse_abi(value)
    except ValueError as error:
        raise InvalidArgument(f"volume attribute 'abi' {error}") from None


def parse_abi(value: str) -> Abi:
    """An ``abi`` value (attribute or ``--default-abi``); ValueError naming the choices."""
    try:
        return Abi(value)
    except ValueError:
        allowed = ", ".join(abi.value for abi in Abi)
        raise ValueError(f"{value[:40]!r} is not one of: {allowed}") from None


def _parse_policy(value: str, source: ModuleSource) -> PullPolicy:
    value = value.strip()
    if value in ("", "UNSPECIFIED_POLICY"):
        # As Istio and kubelet: a floating tag is re-checked, a pinned one is not.
        if isinstance(source, Reference) and source.digest is None and source.is_latest_or_untagged:
            return PullPolicy.ALWAYS
        return PullPolicy.IF_NOT_PRESENT
    try:
        return PullPolicy(value)
    except ValueError:
        allowed = ", ".join(policy.value for policy in PullPolicy)
        raise InvalidArgument(
            f"volume attribute 'imagePullPolicy' {value[:40]!r} is not one of: {allowed}"
        ) from None
