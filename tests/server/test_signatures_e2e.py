"""Signed modules through the driver: node policy, pod attributes, cache, real cosign output.

Real registry (docker-registry, no referrers API: layout B is found through the fallback
tag), real gRPC, real mounts. Keys are PEM files given as --verify-key, the policy a YAML
file, as the chart mounts them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from support.cosign import (
    DATA,
    Signer,
    make_bundle,
    push_bundle_referrer,
    push_fixture,
    push_signature_tag,
    signature_tag,
    signed_layer,
    simplesigning_payload,
    statement,
)
from support.driver import NodeDirs, in_process
from support.kubelet import Kubelet, rpc_error
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.server.serve import Driver
from csi_wasm.settings import VerifySettings

TEAM_A, RELEASE = Signer.p256(), Signer.rsa3072()
OTHER = Signer.p384()


@dataclasses.dataclass
class Node:
    driver: Driver
    kubelet: Kubelet
    registry: Registry

    def checks(self, result: str, layout: str = "none") -> float:
        value = self.driver.metrics.registry.get_sample_value(
            "csi_wasm_signature_verifications_total", {"result": result, "layout": layout}
        )
        return value or 0.0


StartNode = Callable[..., Node]


@pytest.fixture
def start_node(node_dirs: NodeDirs, registry: Registry, tmp_path: Path) -> Iterator[StartNode]:
    """A driver with keys team-a (P-256), release (RSA-3072), other (P-384) and ``policy``."""
    keys = tmp_path / "keys"
    keys.mkdir()
    flags = tuple(
        f"{name}={signer.write_public(keys / f'{name}.pub')}"
        for name, signer in (("team-a", TEAM_A), ("release", RELEASE), ("other", OTHER))
    )
    with ExitStack() as stack:

        def start(policy: str = "", *, deny: bool = False) -> Node:
            policy_file = tmp_path / "policy.yaml"
            policy_file.write_text(policy)
            settings = dataclasses.replace(
                node_dirs.settings(insecure_registries=frozenset({registry.host})),
                verify=VerifySettings(flags, str(policy_file), deny),
            )
            driver, kubelet = stack.enter_context(in_process(node_dirs, settings))
            return Node(driver, kubelet, registry)

        yield start


def enforce(registry: Registry, keys: str = "team-a, release", mode: str = "enforce") -> str:
    return f'rules:\n- match: "{registry.host}/signed/**"\n  keys: [{keys}]\n  mode: {mode}\n'


def pushed(registry: Registry, repo: str, seed: str = "m") -> PushedModule:
    return push_wasm_artifact(registry, repo, "v1", make_module(4096, seed))


def sign_a(registry: Registry, module: PushedModule, signer: Signer) -> None:
    payload = simplesigning_payload(module.manifest_digest, module.reference)
    push_signature_tag(
        registry, module.repo, module.manifest_digest, [signed_layer(signer, payload)]
    )


def sign_b(registry: Registry, module: PushedModule, signer: Signer) -> None:
    bundle = make_bundle([signer], statement(module.manifest_digest, module.reference))
    push_bundle_referrer(registry, module.repo, module.manifest_descriptor(), bundle)


@pytest.fixture
def repo(unique_repo: str) -> str:
    return "signed/" + unique_repo


def test_unsigned_module_is_refused_and_its_blob_never_fetched(
    start_node: StartNode, registry: Registry, repo: str
) -> None:
    node = start_node(enforce(registry))
    module = pushed(registry, repo)
    before = registry.mark()
    pod = node.kubelet.new_pod()
    code, message = rpc_error(lambda: node.kubelet.publish(pod, {"url": module.reference}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message == (
        f"{module.reference}: rule {registry.host}/signed/** needs a signature by one of keys "
        "team-a, release: 0 of 0 signatures verify with them; no bundle found; no .sig tag found"
    )
    assert not pod.target.exists()
    assert registry.blob_gets(module.layer_digest, since=before) == 0
    assert node.checks("rejected") == 1


@pytest.mark.parametrize(("layout", "signer"), [("simplesigning", TEAM_A), ("bundle", RELEASE)])
def test_signed_module_is_served_and_a_warm_publish_asks_nothing(
    start_node: StartNode, registry: Registry, repo: str, layout: str, signer: Signer
) -> None:
    node = start_node(enforce(registry))
    module = pushed(registry, repo)
    (sign_a if layout == "simplesigning" else sign_b)(registry, module, signer)
    first = node.kubelet.new_pod()
    cold = registry.mark()
    node.kubelet.publish(first, {"url": module.reference, "imagePullPolicy": "IfNotPresent"})
    assert (first.target / "plugin.wasm").read_bytes() == make_module(4096, "m")
    assert node.checks("verified", layout) == 1
    # a valid bundle suffices: the .sig tag is then not asked for (as cosign 3)
    sig_gets = registry.manifest_gets(signature_tag(module.manifest_digest), since=cold)
    assert sig_gets == (1 if layout == "simplesigning" else 0)

    before = registry.mark()
    node.kubelet.publish(
        node.kubelet.new_pod(), {"url": module.reference, "imagePullPolicy": "IfNotPresent"}
    )
    assert registry.records(since=before) == []
    assert node.checks("verified", layout) == 1


def test_a_signature_by_a_key_the_rule_does_not_name_is_refused(
    start_node: StartNode, registry: Registry, repo: str
) -> None:
    node = start_node(enforce(registry, "team-a"))
    module = pushed(registry, repo)
    sign_a(registry, module, OTHER)
    code, message = rpc_error(
        lambda: node.kubelet.publish(node.kubelet.new_pod(), {"url": module.reference})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "0 of 1 signature verifies with it; 1 by another key; no bundle found" in message


def test_a_herd_verifies_once(start_node: StartNode, registry: Registry, repo: str) -> None:
    node = start_node(enforce(registry))
    module = pushed(registry, repo)
    sign_a(registry, module, TEAM_A)
    before = registry.mark()
    pods = [node.kubelet.new_pod(name=f"p{i}") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda p: node.kubelet.publish(p, {"url": module.reference}), pods))
    assert registry.manifest_gets(signature_tag(module.manifest_digest), since=before) == 1
    assert registry.blob_gets(module.layer_digest, since=before) == 1


def test_warn_mode_mounts_an_unsigned_module(
    start_node: StartNode, registry: Registry, repo: str
) -> None:
    node = start_node(enforce(registry, mode="warn"))
    module = pushed(registry, repo)
    pod = node.kubelet.new_pod()
    node.kubelet.publish(pod, {"url": module.reference})
    assert (pod.target / "plugin.wasm").exists()
    assert node.checks("warned") == 1


def test_a_pod_tightens_but_cannot_loosen(
    start_node: StartNode, registry: Registry, unique_repo: str, repo: str
) -> None:
    node = start_node(enforce(registry))
    loose = pushed(registry, unique_repo, "loose")  # no rule matches it
    node.kubelet.publish(node.kubelet.new_pod(), {"url": loose.reference})
    # now cached: a pod that requires a signature is still refused
    code, message = rpc_error(
        lambda: node.kubelet.publish(
            node.kubelet.new_pod(), {"url": loose.reference, "verify": "required"}
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "verify: required needs a signature by one of keys other, release, team-a" in message
    sign_b(registry, loose, OTHER)
    code, message = rpc_error(
        lambda: node.kubelet.publish(
            node.kubelet.new_pod(), {"url": loose.reference, "verifyKeys": "team-a"}
        )
    )
    assert "verifyKeys needs a signature by key team-a: 0 of 1" in message
    ok = node.kubelet.new_pod()
    node.kubelet.publish(ok, {"url": loose.reference, "verifyKeys": "other"})
    assert (ok.target / "plugin.wasm").exists()

    strict = pushed(registry, repo, "strict")
    for waiver in ({"verify": "false"}, {"verify": "none"}, {"verifyKeys": "nobody"}):
        code, message = rpc_error(
            lambda w=waiver: node.kubelet.publish(  # type: ignore[misc]
                node.kubelet.new_pod(), {"url": strict.reference, **w}
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    code, _ = rpc_error(
        lambda: node.kubelet.publish(
            node.kubelet.new_pod(), {"url": strict.reference, "verify": ""}
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_cached_module_needs_a_verdict_before_a_rule_serves_it(
    start_node: StartNode, registry: Registry, repo: str
) -> None:
    node = start_node()  # no rules yet: the module is cached unverified
    module = pushed(registry, repo)
    node.kubelet.publish(node.kubelet.new_pod(), {"url": module.reference})
    node.driver.stop(grace=0)
    node = start_node(enforce(registry))
    sign_a(registry, module, RELEASE)
    before = registry.mark()
    pod = node.kubelet.new_pod()
    node.kubelet.publish(pod, {"url": module.reference, "imagePullPolicy": "IfNotPresent"})
    assert registry.manifest_gets(signature_tag(module.manifest_digest), since=before) == 1
    assert registry.blob_gets(module.layer_digest, since=before) == 0  # the module was cached


def test_https_module_under_an_enforcing_rule_is_refused(start_node: StartNode) -> None:
    node = start_node('rules:\n- match: "modules.example/**"\n  keys: [team-a]\n')
    url = "https://modules.example/filters/f.wasm"
    code, message = rpc_error(
        lambda: node.kubelet.publish(node.kubelet.new_pod(), {"url": url, "sha256": "a" * 64})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "fetched by URL has none to check" in message


def test_unmatched_deny(start_node: StartNode, registry: Registry, unique_repo: str) -> None:
    node = start_node(enforce(registry), deny=True)
    module = pushed(registry, unique_repo)
    code, message = rpc_error(
        lambda: node.kubelet.publish(node.kubelet.new_pod(), {"url": module.reference})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{registry.host}/{unique_repo} matches no rule" in message


@pytest.mark.parametrize(
    ("fixture", "accepted"),
    [
        ("dir-img-cosign-valid", True),
        ("dir-img-cosign-mixed", True),
        ("dir-img-cosign-modified-manifest", False),
    ],
)
def test_real_cosign_signatures_through_the_driver(
    node_dirs: NodeDirs, registry: Registry, repo: str, fixture: str, accepted: bool
) -> None:
    policy = node_dirs.base / "policy.yaml"
    policy.write_text(enforce(registry, "release"))
    settings = dataclasses.replace(
        node_dirs.settings(insecure_registries=frozenset({registry.host})),
        verify=VerifySettings((f"release={DATA / 'cosign.pub'}",), str(policy)),
    )
    digest, body = push_fixture(registry, repo, fixture)
    layer = json.loads(body)["layers"][0]["digest"]
    with in_process(node_dirs, settings) as (driver, kubelet):
        before = registry.mark()
        code, message = rpc_error(
            lambda: kubelet.publish(kubelet.new_pod(), {"url": f"{registry.host}/{repo}:signed"})
        )
        node = Node(driver, kubelet, registry)
        assert node.checks("verified", "simplesigning") == int(accepted)
        assert node.checks("rejected") == int(not accepted)
    # The fixture is a container image whose layers are placeholders: a verified one
    # goes on to fetch its layer (and fails there); a refused one never does.
    assert (registry.blob_gets(layer, since=before) > 0) is accepted, message
    if not accepted:
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "by a trusted key but for another module" in message
    assert registry.manifest_gets(signature_tag(digest), since=before) == 1


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--verify-key", "a=/nonexistent.pub"], "cannot read key file /nonexistent.pub"),
        (
            ["--verify-key", f"a={DATA / 'dir-img-cosign-valid' / 'manifest.json'}"],
            "is not a PEM public key",
        ),
        (["--verify-policy", "/nonexistent.yaml"], "cannot read policy file /nonexistent.yaml"),
    ],
)
def test_serve_refuses_to_start_on_bad_key_or_policy(
    node_dirs: NodeDirs, flags: list[str], problem: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "csi_wasm", "serve", *node_dirs.serve_flags(), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert problem in done.stderr


def test_serve_refuses_a_rule_naming_an_unknown_key(node_dirs: NodeDirs) -> None:
    policy = node_dirs.base / "policy.yaml"
    policy.write_text('rules:\n- match: "r.io/**"\n  keys: [ghost]\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "csi_wasm",
            "serve",
            *node_dirs.serve_flags(),
            "--verify-key",
            f"release={DATA / 'cosign.pub'}",
            "--verify-policy",
            str(policy),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert (
        f"policy file {policy} rule 1 names key(s) ghost that no --verify-key defines"
        in done.stderr
    )
