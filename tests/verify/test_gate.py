"""Tests of csi_wasm.verify.gate: requirements per request, kept verdicts, registry outages."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cosign import Signer, push_signature_tag, signed_layer, simplesigning_payload
from support.oci import push_wasm_artifact
from support.registry import Registry, running_registry
from support.wasm import make_module

from csi_wasm.attributes import parse_attributes
from csi_wasm.cache.store import ModuleStore
from csi_wasm.deadline import Deadline
from csi_wasm.errors import SignatureRejected, Unavailable
from csi_wasm.reference import parse_reference
from csi_wasm.registry import RegistryClient, RegistryOptions
from csi_wasm.verify.gate import SignatureGate
from csi_wasm.verify.keys import parse_public_key
from csi_wasm.verify.policy import parse_policy

SIGNER = Signer.p256()
KEYS = {"team-a": parse_public_key("team-a", SIGNER.public_pem(), "team-a")}


class Seen:
    def __init__(self) -> None:
        self.checks: list[tuple[str, str]] = []

    def signature_checked(self, result: str, layout: str) -> None:
        self.checks.append((result, layout))


def gate(store: ModuleStore, client: RegistryClient, rules: str, seen: Seen) -> SignatureGate:
    return SignatureGate(KEYS, parse_policy(rules, "p", KEYS), store, client, seen)


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    s = ModuleStore(tmp_path / "root")
    s.prepare()
    return s


def test_https_urls_are_matched_by_host_and_path(store: ModuleStore) -> None:
    rules = 'rules:\n- {match: "wasm.example/filters/*", keys: [team-a]}\n'
    with RegistryClient(RegistryOptions()) as client:
        g = gate(store, client, rules, Seen())
        request = parse_attributes(
            {"url": "https://user@wasm.example/filters/f.wasm?x=1", "sha256": "a" * 64}
        )
        with pytest.raises(SignatureRejected, match=r"wasm\.example/filters/f\.wasm must carry"):
            g.requirement(request)
        other = parse_attributes({"url": "https://wasm.example/other.wasm", "sha256": "a" * 64})
        assert not g.requirement(other)


def test_a_verdict_is_kept_for_its_key_and_module(
    store: ModuleStore, registry: Registry, unique_repo: str
) -> None:
    module = push_wasm_artifact(registry, unique_repo, "v1", make_module(512, "kept"))
    payload = simplesigning_payload(module.manifest_digest)
    push_signature_tag(
        registry, unique_repo, module.manifest_digest, [signed_layer(SIGNER, payload)]
    )
    seen = Seen()
    rules = f'rules:\n- {{match: "{registry.host}/**", keys: [team-a]}}\n'
    options = RegistryOptions(insecure_registries=frozenset({registry.host}))
    with RegistryClient(options) as client:
        g = gate(store, client, rules, seen)
        requirement = g.requirement(parse_attributes({"url": module.reference}))
        assert not g.satisfied(module.manifest_digest, requirement)
        ref = parse_reference(module.reference)
        outcome = g.check(
            ref, module.reference, module.manifest_digest, None, Deadline.after(30), requirement
        )
        assert seen.checks == [("verified", "simplesigning")]
        g.remember(module.manifest_digest, outcome, module.module_sha256)
        assert not g.satisfied(module.manifest_digest, requirement)  # module not stored yet
        module_dir = store.module_dir(module.module_sha256)
        module_dir.mkdir()
        (module_dir / "plugin.wasm").write_bytes(make_module(512, "kept"))
        assert g.satisfied(module.manifest_digest, requirement)
        assert not g.satisfied(None, requirement)


def test_an_unreachable_registry_is_unavailable_not_a_refusal(
    store: ModuleStore, tmp_path: Path
) -> None:
    seen = Seen()
    with running_registry(tmp_path / "registry") as private:
        host = private.host
        module = push_wasm_artifact(private, "t/down", "v1", make_module(512, "down"))
    options = RegistryOptions(insecure_registries=frozenset({host}))
    with RegistryClient(options, sleep=lambda _seconds: None) as client:
        g = gate(store, client, f'rules:\n- {{match: "{host}/**", keys: [team-a]}}\n', seen)
        requirement = g.requirement(parse_attributes({"url": module.reference}))
        with pytest.raises(Unavailable):
            g.check(
                parse_reference(module.reference),
                module.reference,
                module.manifest_digest,
                None,
                Deadline.after(30),
                requirement,
            )
    assert seen.checks == [("error", "none")]
