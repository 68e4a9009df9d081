"""Tests of csi_wasm.cache.gc: which modules are evicted, and that in-use ones never are.

Real store on disk, real volume records; module ages are set with utime and the
collector gets a fixed clock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.disks import tmpfs
from support.driver import wait_for
from support.wasm import make_module

from csi_wasm.cache.gc import (
    REASON_DISK,
    REASON_SIZE,
    REASON_TTL,
    CacheCollector,
    GcLoop,
    GcReport,
    PinHandover,
    choose_victims,
    gc_command,
)
from csi_wasm.cache.store import MODULE_FILE, CachedModule, ModuleStore
from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords
from csi_wasm.mounts import bind_read_only, unmount
from csi_wasm.puller import PulledModule
from csi_wasm.settings import CacheSettings

NOW = 2_000_000_000.0
DAY = 86400.0
KIB = 1024


def cached(name: str, size: int, age_days: float) -> CachedModule:
    return CachedModule(name * 32, size, size, NOW - age_days * DAY)


# choosing victims (pure)


def test_nothing_is_evicted_under_budget_and_ttl() -> None:
    modules = [cached("aa", 100, 1), cached("bb", 100, 2)]
    assert choose_victims(modules, set(), max_bytes=1000, ttl=7 * DAY, now=NOW) == []


def test_ttl_evicts_every_module_unused_too_long() -> None:
    modules = [cached("aa", 100, 8), cached("bb", 100, 1), cached("cc", 100, 30)]
    victims = choose_victims(modules, set(), max_bytes=10**9, ttl=7 * DAY, now=NOW)
    assert [(v.digest[:2], v.reason) for v in victims] == [("cc", REASON_TTL), ("aa", REASON_TTL)]


def test_size_bound_evicts_least_recently_used_first() -> None:
    modules = [cached("aa", 400, 3), cached("bb", 400, 1), cached("cc", 400, 2)]
    victims = choose_victims(modules, set(), max_bytes=500, ttl=7 * DAY, now=NOW)
    assert [(v.digest[:2], v.reason) for v in victims] == [("aa", REASON_SIZE), ("cc", REASON_SIZE)]


def test_in_use_modules_are_never_evicted_even_over_budget_or_ttl() -> None:
    modules = [cached("aa", 400, 30), cached("bb", 400, 20), cached("cc", 400, 1)]
    in_use = {"aa" * 32, "bb" * 32}
    victims = choose_victims(modules, in_use, max_bytes=1, ttl=7 * DAY, now=NOW)
    assert [v.digest[:2] for v in victims] == ["cc"]


def test_incoming_bytes_count_against_the_budget() -> None:
    modules = [cached("aa", 400, 2), cached("bb", 400, 1)]
    victims = choose_victims(modules, set(), max_bytes=1000, ttl=7 * DAY, now=NOW, incoming=300)
    assert [v.digest[:2] for v in victims] == ["aa"]


def test_disk_needed_evicts_until_enough_is_free() -> None:
    modules = [cached("aa", 400, 3), cached("bb", 400, 2), cached("cc", 400, 1)]
    victims = choose_victims(
        modules, set(), max_bytes=10**9, ttl=7 * DAY, now=NOW, disk_free=100, disk_needed=800
    )
    assert [(v.digest[:2], v.reason) for v in victims] == [("aa", REASON_DISK), ("bb", REASON_DISK)]


# the collector on a real store


@dataclass
class Node:
    store: ModuleStore
    records: VolumeRecords
    evicted: list[tuple[str, int]] = field(default_factory=list)

    def module(self, seed: str, size: int = 4 * KIB, age_days: float = 0.0) -> str:
        data = make_module(size, seed)
        module_hex = hashlib.sha256(data).hexdigest()
        with self.store.temp_file() as (path, fd):
            os.write(fd, data)
            self.store.commit_module(path, module_hex)
        when = NOW - age_days * DAY
        os.utime(self.store.module_dir(module_hex), (when, when))
        return module_hex

    def record(self, volume: str, module_hex: str, target: str = "/nowhere") -> None:
        self.records.put(VolumeRecord(volume, target, "r.io/m:v1", None, module_hex, "ns/pod"))

    def collector(self, max_bytes: int = 10**9, ttl: float = 7 * DAY) -> CacheCollector:
        node = self

        class Observer:
            def module_evicted(self, reason: str, size: int) -> None:
                node.evicted.append((reason, size))

        settings = CacheSettings(max_bytes=max_bytes, ttl=ttl)
        return CacheCollector(
            self.store, self.records, settings, clock=lambda: NOW, observer=Observer()
        )

    def stored(self) -> set[str]:
        return {m.digest for m in self.store.cached_modules()}


def make_node(root: Path) -> Node:
    store = ModuleStore(root)
    store.prepare()
    records = VolumeRecords(root / "volumes")
    records.prepare()
    return Node(store, records)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path / "root")


@pytest.fixture
def private_disk_node(tmp_path: Path) -> Iterator[Node]:
    """A node whose root is a tmpfs of its own: free space no other process changes."""
    with tmpfs(tmp_path / "root", size="1m") as disk:
        yield make_node(disk.path)


def test_ttl_eviction_deletes_files_index_and_counts(node: Node) -> None:
    old = node.module("old", age_days=8)
    fresh = node.module("fresh", age_days=1)
    node.store.record_manifest("sha256:" + "0a" * 32, old)
    node.store.record_reference("r.io/m:old", "sha256:" + "0a" * 32)

    report = node.collector().collect()

    assert [(e.digest, e.reason) for e in report.evicted] == [(old, REASON_TTL)]
    assert node.stored() == {fresh}
    assert not os.listdir(node.store.trash_dir)
    assert node.store.module_for_manifest("sha256:" + "0a" * 32) is None
    assert os.listdir(node.store.manifests_dir) == []
    assert os.listdir(node.store.refs_dir) == []
    assert node.evicted == [(REASON_TTL, report.freed_bytes)]
    assert (report.cache_modules, report.in_use) == (1, 0)


def test_size_bound_keeps_the_most_recently_used(node: Node) -> None:
    a = node.module("a", age_days=3)
    b = node.module("b", age_days=1)
    c = node.module("c", age_days=2)
    size = node.store.usage()[0] // 3

    report = node.collector(max_bytes=size + 1).collect()

    assert [e.digest for e in report.evicted] == [a, c]
    assert node.stored() == {b}
    assert report.cache_bytes == size


def test_modules_in_use_by_records_pins_and_sources_are_kept(node: Node) -> None:
    recorded = node.module("recorded", age_days=30)
    pinned = node.module("pinned", age_days=30)
    listed = node.module("listed", age_days=30)
    listed_by_manifest = node.module("listed-by-manifest", age_days=30)
    unused = node.module("unused", age_days=30)
    node.record("vol-1", recorded)
    node.store.pin(pinned)
    os.utime(node.store.module_dir(pinned), (NOW - 30 * DAY,) * 2)
    node.store.record_manifest("sha256:" + "0b" * 32, listed_by_manifest)
    collector = node.collector(max_bytes=1)
    collector.add_pin_source(lambda: {listed, "sha256:" + "0b" * 32, "not-a-digest"})

    report = collector.collect()

    assert [e.digest for e in report.evicted] == [unused]
    assert node.stored() == {recorded, pinned, listed, listed_by_manifest}
    assert report.in_use == 4


def test_a_failing_pin_source_is_logged_not_fatal(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    node.module("m", age_days=30)

    def broken() -> Iterable[str]:
        raise RuntimeError("boom")

    collector = node.collector()
    collector.add_pin_source(broken)
    assert len(collector.collect().evicted) == 1
    assert "pin source failed" in caplog.text


def test_dry_run_changes_nothing(node: Node) -> None:
    old = node.module("old", age_days=8)
    before = sorted(os.listdir(node.store.modules_dir))

    report = node.collector().collect(dry_run=True)

    assert report.dry_run
    assert [e.digest for e in report.evicted] == [old]
    assert sorted(os.listdir(node.store.modules_dir)) == before
    assert node.evicted == []
    assert report.cache_modules == 0  # as it would be


def test_a_module_recorded_during_eviction_is_put_back(node: Node) -> None:
    """`csi-wasm gc` cannot see serve's pins: a record written meanwhile saves the module."""
    module_hex = node.module("raced", age_days=30)
    calls = 0
    real_modules = node.records.modules

    def modules() -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 2:  # the re-check after the rename: another process recorded it
            node.record("vol-late", module_hex)
        return real_modules()

    node.records.modules = modules  # type: ignore[method-assign]

    report = node.collector().collect()

    assert report.evicted == ()
    assert report.put_back == (module_hex,)
    assert node.store.has_module(module_hex)
    assert node.evicted == []


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    targets: list[Path] = []
    try:
        yield targets
    finally:
        for target in targets:
            unmount(target)


def test_a_mounted_module_without_record_is_kept(
    node: Node, tmp_path: Path, mounts: list[Path]
) -> None:
    module_hex = node.module("mounted", age_days=30)
    target = tmp_path / "pod" / "mount"
    target.mkdir(parents=True)
    bind_read_only(node.store.module_dir(module_hex), target)
    mounts.append(target)

    assert node.collector(max_bytes=1).collect().evicted == ()
    assert node.store.has_module(module_hex)


def test_leftover_trash_is_deleted_unless_mounted_or_recorded(
    node: Node, tmp_path: Path, mounts: list[Path]
) -> None:
    gone = node.module("gone")
    mounted = node.module("mounted")
    recorded = node.module("recorded")
    node.record("vol-1", recorded)
    with node.store.lock:
        moved = {h: node.store.discard_locked(h) for h in (gone, mounted, recorded)}
    mounted_path = moved[mounted]
    assert mounted_path is not None
    target = tmp_path / "pod" / "mount"
    target.mkdir(parents=True)
    bind_read_only(mounted_path, target)
    mounts.append(target)
    node.store.quarantine_dir.mkdir()
    (node.store.quarantine_dir / "ff.stamp").mkdir()

    node.collector().collect()  # an interrupted collection left these behind

    assert node.stored() == {mounted, recorded}  # put back where they belong
    assert not os.listdir(node.store.trash_dir)
    assert not os.listdir(node.store.quarantine_dir)
    assert (target / MODULE_FILE).is_file()


def test_quarantined_module_is_kept_while_mounted(
    node: Node, tmp_path: Path, mounts: list[Path]
) -> None:
    module_hex = node.module("bad")
    moved = node.store.quarantine(module_hex, "stamp")
    assert moved is not None
    target = tmp_path / "pod" / "mount"
    target.mkdir(parents=True)
    bind_read_only(moved, target)
    mounts.append(target)

    node.collector().collect()
    assert (moved / MODULE_FILE).is_file()

    unmount(target)
    node.collector().collect()
    assert not moved.exists()


def test_reserve_collects_only_when_over_budget(node: Node) -> None:
    a = node.module("a", age_days=2)
    b = node.module("b", age_days=1)
    size = node.store.usage()[0] // 2
    collector = node.collector(max_bytes=3 * size)

    collector.reserve(size)
    assert node.stored() == {a, b}
    collector.reserve(size + 1)
    assert node.stored() == {b}
    assert node.evicted == [(REASON_SIZE, size)]


def test_free_disk_evicts_until_enough_is_free(private_disk_node: Node) -> None:
    node = private_disk_node
    a = node.module("a", age_days=2)
    node.module("b", age_days=1)
    stats = os.statvfs(node.store.root)
    free = stats.f_bavail * stats.f_frsize
    freed = node.collector().free_disk(free + 1)  # one more byte than free: the oldest goes
    assert freed > 0
    assert a not in node.stored() and len(node.stored()) == 1
    assert node.collector().free_disk(1) == 0


def test_concurrent_pins_and_collections_never_lose_a_pinned_module(node: Node) -> None:
    """What a publish does (pin, use, unpin) against a collector evicting everything unused."""
    modules = [node.module(f"race-{i}") for i in range(4)]
    collector = node.collector(max_bytes=1)
    stop = threading.Event()
    failures: list[str] = []

    def collect() -> None:
        while not stop.is_set():
            collector.collect()

    def use(module_hex: str) -> None:
        for _ in range(50):
            if not node.store.pin(module_hex):
                continue  # evicted: a publish would pull it again
            try:
                data = (node.store.module_dir(module_hex) / MODULE_FILE).read_bytes()
                if hashlib.sha256(data).hexdigest() != module_hex:
                    failures.append(module_hex)
            except OSError as error:
                failures.append(f"{module_hex}: {error}")
            finally:
                node.store.unpin(module_hex)

    collector_thread = threading.Thread(target=collect)
    collector_thread.start()
    users = [threading.Thread(target=use, args=(m,)) for m in modules]
    for thread in users:
        thread.start()
    for thread in users:
        thread.join()
    stop.set()
    collector_thread.join()
    assert failures == []


def test_gc_loop_runs_at_start_and_when_woken(node: Node) -> None:
    node.module("old", age_days=30)
    reports: list[GcReport] = []
    ran = threading.Condition()

    def on_report(report: GcReport) -> None:
        with ran:
            reports.append(report)
            ran.notify_all()

    loop = GcLoop(node.collector(), interval=3600, on_report=on_report)
    loop.start()
    try:
        with ran:
            assert ran.wait_for(lambda: len(reports) == 1, timeout=10)
        assert len(reports[0].evicted) == 1
        node.module("older", age_days=40)
        loop.wake()
        with ran:
            assert ran.wait_for(lambda: len(reports) == 2, timeout=10)
        assert len(reports[1].evicted) == 1
    finally:
        loop.stop()


# csi-wasm gc


def test_gc_command_prints_what_it_frees(node: Node, tmp_path: Path) -> None:
    old = node.module("old")
    kept = node.module("kept")
    month_ago = time.time() - 30 * DAY  # the command runs on the real clock
    for module_hex in (old, kept):
        os.utime(node.store.module_dir(module_hex), (month_ago, month_ago))
    node.record("vol-1", kept)
    lines: list[str] = []
    settings = CacheSettings(ttl=7 * DAY)

    assert gc_command(node.store.root, settings, dry_run=True, out=lines.append) == 0
    assert lines[0].startswith(f"would evict sha256:{old}")
    assert "unused longer than --cache-ttl" in lines[0]
    assert lines[-1].startswith("would free")
    assert node.store.has_module(old)

    lines.clear()
    assert gc_command(node.store.root, settings, out=lines.append) == 0
    assert lines[0].startswith(f"evicted sha256:{old}")
    assert lines[-1].startswith("freed ") and "1 in use" in lines[-1]
    assert not node.store.has_module(old)

    assert gc_command(tmp_path / "nothing-here", settings, out=lines.append) == 2
    assert "holds no module cache" in lines[-1]


def test_pin_handover_keeps_a_fetched_module_pinned_until_listed(node: Node) -> None:
    listed_later = node.module("listed-later")
    dropped = node.module("dropped")
    listed: set[str] = set()
    handover = PinHandover(lambda module: node.store.unpin(module.digest))
    source = handover.listing(lambda: set(listed))
    for module_hex in (listed_later, dropped):
        node.store.pin(module_hex)  # what Puller.get returned
        size = node.store.module_dir(module_hex).joinpath(MODULE_FILE).stat().st_size
        module = PulledModule(module_hex, node.store.module_dir(module_hex), size, None, True)
        assert handover.keep(module) == module_hex

    assert source() == set()  # the prefetcher has not recorded them yet: still pinned
    assert node.store.pinned() == {listed_later, dropped}
    listed.add("sha256:" + listed_later)
    assert source() == {listed_later}
    # listed now: its pin is released (the listing protects it); the other was dropped
    assert node.store.pinned() == set()
    assert handover.held() == 0

    collector = node.collector(max_bytes=1)
    collector.add_pin_source(source)
    assert [e.digest for e in collector.collect().evicted] == [dropped]


# the loop on a root that fails


class CountingCollector(CacheCollector):
    """The real collector, counting its runs (failed ones too) for the test to wait on."""

    def __init__(self, node: Node) -> None:
        super().__init__(node.store, node.records, CacheSettings())
        self.runs = 0
        self.changed = threading.Condition()

    def collect(self, **kwargs: Any) -> GcReport:
        try:
            return super().collect(**kwargs)
        finally:
            with self.changed:
                self.runs += 1
                self.changed.notify_all()

    def wait_runs(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.runs >= count, timeout=10)


def test_gc_loop_logs_a_read_only_root_once_and_its_repair_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "root") as disk:
        node = make_node(disk.path)
        collector = CountingCollector(node)
        reports: list[GcReport] = []
        disk.read_only()
        loop = GcLoop(collector, interval=3600, on_report=reports.append)
        caplog.set_level(logging.INFO, logger="csi_wasm.cache.gc")
        loop.start()
        try:
            for runs in (1, 2, 3):  # three failed runs
                collector.wait_runs(runs)
                if runs < 3:
                    loop.wake()
            disk.writable()
            loop.wake()
            wait_for(lambda: len(reports) == 1, what="a run after the repair")
        finally:
            loop.stop()
    lines = [(r.levelname, r.getMessage(), r.__dict__.get("fields", {})) for r in caplog.records]
    assert [line[:2] for line in lines] == [
        ("WARNING", "garbage collection failed; will try again"),
        ("INFO", "garbage collection works again"),
    ]
    error = lines[0][2]["error"]
    assert error.startswith(f"{disk.path / '.lock'}: Read-only file system; ")
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
