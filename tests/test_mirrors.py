"""--registry-mirror: parsing, routing, and a dead mirror costing one timeout, then none.

The pulls below go to a real registry (the source) behind real dead mirrors: a closed
port, a server that accepts and never answers, and a proxy answering 503. The clock of
the mirrors' backoff is injected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from reliability.faultproxy import Fault, fault_proxy
from support.deadhosts import closed_port, silent_server
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.access import AccessRecords
from csi_wasm.attributes import parse_attributes
from csi_wasm.cache.store import ModuleStore
from csi_wasm.mirrors import MirrorHealth, Mirrors, parse_mirror
from csi_wasm.puller import Puller
from csi_wasm.reference import parse_reference
from csi_wasm.registry import RegistryClient, RegistryOptions
from csi_wasm.settings import PullSettings


def test_mirror_with_prefix_rewrites_the_repository() -> None:
    mirror = parse_mirror("docker.io=harbor.example.com/dockerhub")
    rewritten = mirror.rewrite(parse_reference("nginx:1.27"))
    assert str(rewritten) == "harbor.example.com/dockerhub/library/nginx:1.27"


def test_source_host_is_normalised() -> None:
    assert parse_mirror("index.docker.io=m.example:5000").source == "docker.io"


def test_candidates_try_mirrors_in_order_then_the_source() -> None:
    mirrors = Mirrors([parse_mirror("ghcr.io=a.example"), parse_mirror("ghcr.io=b.example/p")])
    ref = parse_reference("ghcr.io/acme/f@sha256:" + "a" * 64)
    assert [str(r) for r in mirrors.candidates(ref)] == [
        "a.example/acme/f@sha256:" + "a" * 64,
        "b.example/p/acme/f@sha256:" + "a" * 64,
        str(ref),
    ]
    other = parse_reference("quay.io/x/y:1")
    assert mirrors.candidates(other) == [other]


@pytest.mark.parametrize("text", ["ghcr.io", "=m.example", "ghcr.io=", "ghcr.io=UPPER/Case"])
def test_malformed_mirrors_name_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--registry-mirror"):
        parse_mirror(text)


# --- MirrorHealth: the backoff, on an injected clock -------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_mirror_is_skipped_until_its_backoff_ends_doubling_to_the_cap() -> None:
    clock = Clock()
    health = MirrorHealth(["m.example"], clock=clock, initial=5.0, cap=20.0)
    assert health.take("m.example")
    health.failed("m.example", "connection refused")
    waits = []
    for _ in range(5):
        waited = 0.0
        while not health.take("m.example"):
            clock.now += 1.0
            waited += 1.0
        waits.append(waited)
        health.failed("m.example", "connection refused")
    assert waits == [5.0, 10.0, 20.0, 20.0, 20.0]


def test_one_caller_retries_a_down_mirror_while_the_others_skip_it() -> None:
    clock = Clock()
    health = MirrorHealth(["m.example"], clock=clock)
    health.failed("m.example", "timed out")
    clock.now += 5.0
    assert health.take("m.example")
    assert not health.take("m.example")  # the retry is under way
    health.abandoned("m.example")  # it ended without a verdict: someone else may try
    assert health.take("m.example")
    health.answered("m.example")
    assert health.is_up("m.example")
    assert health.take("m.example") and health.take("m.example")


def test_success_resets_the_backoff_and_each_change_is_told_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    health = MirrorHealth(
        ["m.example"], clock=clock, on_change=lambda h, up: changes.append((h, up))
    )
    caplog.set_level(logging.DEBUG, logger="csi_wasm.mirrors")
    for _ in range(3):  # down, then two failed retries
        assert health.take("m.example")
        health.failed("m.example", "HTTP 503")
        clock.now += 3600
    health.take("m.example")
    health.answered("m.example")
    health.answered("m.example")
    health.failed("m.example", "HTTP 503")
    clock.now += 5.0  # the first backoff again, not the fourth
    assert health.take("m.example")

    down, up = ("m.example", False), ("m.example", True)
    assert changes == [up, down, up, down]
    went_down, came_up = "mirror is down; pulling from the source meanwhile", "mirror is back up"
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert infos == [went_down, came_up, went_down]


# --- through the puller: a real registry as the source, real dead mirrors ----------------


@dataclass
class Node:
    """A puller whose registry has one mirror; its backoff runs on ``clock``."""

    puller: Puller
    health: MirrorHealth
    clock: Clock
    changes: list[tuple[str, bool]] = field(default_factory=list)
    count: int = 0

    def pull(self, registry: Registry, repo: str) -> PushedModule:
        """Push a new module to the source and pull it (never from the cache)."""
        self.count += 1
        pushed = push_wasm_artifact(
            registry, repo, f"v{self.count}", make_module(2048, f"{repo}-{self.count}")
        )
        module = self.puller.get(parse_attributes({"url": pushed.reference}), None, wait=60)
        self.puller.release(module)
        assert module.digest == pushed.module_sha256
        return pushed


MakeNode = Callable[[str], Node]


@pytest.fixture
def make_node(tmp_path: Path, registry: Registry) -> Iterator[MakeNode]:
    clients: list[RegistryClient] = []

    def make(mirror: str) -> Node:
        hosts = frozenset({registry.host, mirror})
        client = RegistryClient(
            RegistryOptions(
                insecure_registries=hosts, mirror_hosts=frozenset({mirror}), mirror_timeout=0.5
            )
        )
        clients.append(client)
        store = ModuleStore(tmp_path / f"root-{len(clients)}")
        store.prepare()
        access = AccessRecords(store.root / "access")
        access.prepare()
        clock = Clock()
        changes: list[tuple[str, bool]] = []
        health = MirrorHealth(
            [mirror], clock=clock, on_change=lambda host, up: changes.append((host, up))
        )
        mirrors = Mirrors([parse_mirror(f"{registry.host}={mirror}")])
        puller = Puller(
            store,
            client,
            PullSettings(insecure_registries=hosts),
            access,
            mirrors=mirrors,
            mirror_health=health,
        )
        return Node(puller, health, clock, changes)

    yield make
    for client in clients:
        client.close()


def test_a_closed_port_mirror_is_marked_down_once(
    make_node: MakeNode, registry: Registry, unique_repo: str, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = closed_port()
    node = make_node(mirror)
    caplog.set_level(logging.INFO, logger="csi_wasm.mirrors")
    for _ in range(3):
        node.pull(registry, unique_repo)
    assert node.changes == [(mirror, True), (mirror, False)]
    downs = [r for r in caplog.records if r.getMessage().startswith("mirror is down")]
    assert len(downs) == 1
    assert "connection refused" in downs[0].fields["error"]  # type: ignore[attr-defined]


def test_a_mirror_that_never_answers_costs_one_timeout_then_none(
    make_node: MakeNode, registry: Registry, unique_repo: str
) -> None:
    with silent_server() as mirror:
        node = make_node(mirror.host)
        node.pull(registry, unique_repo)
        assert mirror.accepted == 1  # one attempt, no retries, then the source
        assert not node.health.is_up(mirror.host)

        node.pull(registry, unique_repo)
        assert mirror.accepted == 1  # marked down: straight to the source

        node.clock.now += 5.0  # the backoff ends: one pull tries the mirror again
        node.pull(registry, unique_repo)
        assert mirror.accepted == 2
        node.clock.now += 5.0  # the backoff doubled to 10 s
        node.pull(registry, unique_repo)
        assert mirror.accepted == 2
        node.clock.now += 5.0
        node.pull(registry, unique_repo)
        assert mirror.accepted == 3


def test_a_mirror_answering_503_is_asked_once_and_used_again_once_it_recovers(
    make_node: MakeNode, registry: Registry, unique_repo: str
) -> None:
    with fault_proxy(registry.url) as mirror:
        mirror.inject(Fault("status", target="manifests", status=503))
        node = make_node(mirror.host)
        before = registry.mark()
        pushed = node.pull(registry, unique_repo)
        assert mirror.count("manifests") == 1  # a mirror is not retried: the source is
        assert registry.blob_gets(pushed.layer_digest, since=before) == 1  # from the source

        mirror.clear()
        node.pull(registry, unique_repo)
        assert mirror.count("manifests") == 1  # still marked down

        node.clock.now += 5.0
        node.pull(registry, unique_repo)
        assert (mirror.count("manifests"), mirror.count("blobs")) == (2, 1)
        assert node.health.is_up(mirror.host)
        assert node.changes == [(mirror.host, True), (mirror.host, False), (mirror.host, True)]
