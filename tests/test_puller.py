"""Tests of csi_wasm.puller: pinned results, and room made when the disk is full.

Real registry; the collector is stubbed at its seam (``CacheSpace``).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.driver import wait_for
from support.gate import gated_proxy
from support.oci import push_compat_image, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.access import AccessRecords
from csi_wasm.attributes import parse_attributes
from csi_wasm.cache.store import ModuleStore
from csi_wasm.errors import DeadlineExceeded, ResourceExhausted
from csi_wasm.puller import Puller, Resolution
from csi_wasm.registry import RegistryClient, RegistryOptions
from csi_wasm.settings import PullSettings

KIB = 1024


@dataclass
class Space:
    """The collector's seam: frees a ballast file when asked for disk space."""

    ballast: Path | None = None
    reserved: list[int] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)

    def reserve(self, incoming: int) -> None:
        self.reserved.append(incoming)

    def free_disk(self, needed: int) -> int:
        self.asked.append(needed)
        if self.ballast is None or not self.ballast.exists():
            return 0
        size = self.ballast.stat().st_size
        self.ballast.unlink()
        return size


@dataclass
class Setup:
    store: ModuleStore
    hosts: set[str]
    space: Space = field(default_factory=Space)
    clients: list[RegistryClient] = field(default_factory=list)

    def puller(self) -> Puller:
        hosts = frozenset(self.hosts)
        client = RegistryClient(RegistryOptions(insecure_registries=hosts))
        self.clients.append(client)
        access = AccessRecords(self.store.root / "access")
        access.prepare()
        return Puller(
            self.store, client, PullSettings(insecure_registries=hosts), access, space=self.space
        )

    def close(self) -> None:
        for client in self.clients:
            client.close()


def make_setup(root: Path, *hosts: str) -> Setup:
    store = ModuleStore(root)
    store.prepare()
    return Setup(store, set(hosts))


@pytest.fixture
def setup(tmp_path: Path, registry: Registry) -> Iterator[Setup]:
    s = make_setup(tmp_path / "root", registry.host)
    yield s
    s.close()


def test_get_returns_a_pinned_module_and_release_unpins(
    setup: Setup, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(2 * KIB, "pinned"))
    puller = setup.puller()
    module_request = parse_attributes({"url": pushed.reference})

    pulled = puller.get(module_request, None, wait=30)
    cached = puller.get(module_request, None, wait=30)

    assert (pulled.from_cache, cached.from_cache) == (False, True)
    assert setup.store.pinned() == {pushed.module_sha256}
    puller.release(pulled)
    assert setup.store.pinned() == {pushed.module_sha256}
    puller.release(cached)
    assert setup.store.pinned() == set()
    assert setup.space.reserved == [pushed.module_size]  # once, before the commit


def test_every_waiter_of_one_pull_gets_its_own_pin(
    setup: Setup, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4 * KIB, "waiters")
    push_wasm_artifact(registry, unique_repo, "v1", module)
    with gated_proxy(registry.url) as proxy:
        setup.hosts.add(proxy.host)
        puller = setup.puller()
        module_request = parse_attributes({"url": f"{proxy.host}/{unique_repo}:v1"})
        results = []

        def get() -> None:
            results.append(puller.get(module_request, None, wait=30))

        threads = [threading.Thread(target=get) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_for(
            lambda: sum(p.waiters for p in puller._inflight.values()) == 3,
            what="three requests waiting on one pull",
        )
        proxy.release.set()
        for thread in threads:
            thread.join()
        assert proxy.blob_requests == 1

    digest = results[0].digest
    for result in results:
        assert setup.store.pinned() == {digest}
        puller.release(result)
    assert setup.store.pinned() == set()  # the pull's own pin was handed back


def test_a_waiter_that_gives_up_takes_no_pin(
    setup: Setup, registry: Registry, unique_repo: str
) -> None:
    push_wasm_artifact(registry, unique_repo, "v1", make_module(4 * KIB, "gives-up"))
    with gated_proxy(registry.url) as proxy:
        setup.hosts.add(proxy.host)
        puller = setup.puller()
        module_request = parse_attributes({"url": f"{proxy.host}/{unique_repo}:v1"})
        with pytest.raises(DeadlineExceeded):
            puller.get(module_request, None, wait=0)
        proxy.release.set()
        wait_for(lambda: puller.in_flight() == 0, what="the pull to finish")
    assert setup.store.pinned() == set()
    assert len(setup.store.cached_modules()) == 1


@pytest.fixture
def small_root(tmp_path: Path, registry: Registry) -> Iterator[Setup]:
    """A driver root on a 256 KiB tmpfs."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)], check=True)
    s = make_setup(root, registry.host)
    try:
        yield s
    finally:
        s.close()
        subprocess.run(["umount", "-l", str(root)], check=False)


def fill(root: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free."""
    stats = os.statvfs(root)
    ballast = root / "ballast"
    ballast.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return ballast


@pytest.mark.parametrize("packaging", ["artifact", "compat"])
def test_a_full_disk_asks_for_room_and_retries_once(
    small_root: Setup, registry: Registry, unique_repo: str, packaging: str
) -> None:
    module = make_module(80 * KIB, f"full-{packaging}")
    if packaging == "artifact":  # the download does not fit
        pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
        small_root.space.ballast = fill(small_root.store.root, 40 * KIB)
    else:  # the download fits, unpacking it does not
        pushed = push_compat_image(registry, unique_repo, "v1", module)
        small_root.space.ballast = fill(small_root.store.root, 100 * KIB)
    puller = small_root.puller()

    pulled = puller.get(parse_attributes({"url": pushed.reference}), None, wait=30)

    assert pulled.digest == pushed.module_sha256
    assert len(small_root.space.asked) == 1
    assert (small_root.store.module_dir(pulled.digest) / "plugin.wasm").read_bytes() == module
    puller.release(pulled)


def test_a_full_disk_with_nothing_to_free_is_resource_exhausted(
    small_root: Setup, registry: Registry, unique_repo: str
) -> None:
    pushed = push_compat_image(registry, unique_repo, "v1", make_module(80 * KIB, "nothing"))
    fill(small_root.store.root, 100 * KIB)
    puller = small_root.puller()

    with pytest.raises(ResourceExhausted, match="no unused module can be evicted"):
        puller.get(parse_attributes({"url": pushed.reference}), None, wait=30)
    assert len(small_root.space.asked) == 1
    assert small_root.store.pinned() == set()


def test_on_resolved_tells_the_format_and_digests_before_the_download(
    tmp_path: Path, registry: Registry, unique_repo: str
) -> None:
    pushed = push_compat_image(registry, unique_repo, "v1", make_module(2 * KIB, "told"), "oci")
    store = ModuleStore(tmp_path / "root")
    store.prepare()
    access = AccessRecords(tmp_path / "access")
    access.prepare()
    told: list[Resolution] = []
    hosts = frozenset({registry.host})
    with RegistryClient(RegistryOptions(insecure_registries=hosts)) as client:
        puller = Puller(store, client, PullSettings(), access, on_resolved=told.append)
        pulled = puller.get(parse_attributes({"url": pushed.reference}), None, wait=30)
        puller.release(pulled)
        cached = puller.get(parse_attributes({"url": pushed.reference}), None, wait=30)
        puller.release(cached)
    (resolution,) = told  # the cached module resolved nothing
    assert str(resolution.reference) == str(resolution.route) == pushed.reference
    assert resolution.manifest_digests == (pushed.manifest_digest,)
    assert resolution.format == "compat-image"
    assert resolution.layer.digest == pushed.layer_digest
