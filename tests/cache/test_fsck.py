"""Tests of csi_wasm.cache.fsck: damaged modules are quarantined, mounts of them keep working."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wasm import make_module

from csi_wasm.cache.fsck import FsckReport, check_store, fsck_command
from csi_wasm.cache.gc import CacheCollector
from csi_wasm.cache.kept_facts import KeptFacts
from csi_wasm.cache.store import MODULE_FILE, ModuleStore
from csi_wasm.cache.volumes import VolumeRecords
from csi_wasm.mounts import bind_read_only, unmount
from csi_wasm.settings import CacheSettings


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    s = ModuleStore(tmp_path / "root")
    s.prepare()
    return s


def add(store: ModuleStore, seed: str, size: int = 3000) -> tuple[str, bytes]:
    data = make_module(size, seed)
    module_hex = hashlib.sha256(data).hexdigest()
    with store.temp_file() as (path, fd):
        os.write(fd, data)
        store.commit_module(path, module_hex)
    return module_hex, data


def corrupt(store: ModuleStore, module_hex: str) -> None:
    """What bit rot or a stray write does: same size, other bytes."""
    plugin = store.module_dir(module_hex) / MODULE_FILE
    plugin.chmod(0o644)
    with plugin.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff" * 16)


def test_clean_store_passes(store: ModuleStore) -> None:
    add(store, "a")
    add(store, "b")
    lines: list[str] = []
    assert fsck_command(store.root, out=lines.append) == 0
    assert lines == [
        "checked 2 module(s), 6000 bytes: every module matches its digest and validates"
    ]


def test_corrupted_module_is_quarantined_and_its_index_dropped(store: ModuleStore) -> None:
    good, _ = add(store, "good")
    bad, _ = add(store, "bad")
    store.record_manifest("sha256:" + "0c" * 32, bad)
    store.record_reference("r.io/m:bad", "sha256:" + "0c" * 32)
    store.record_manifest("sha256:" + "0d" * 32, good)
    corrupt(store, bad)
    lines: list[str] = []

    assert fsck_command(store.root, out=lines.append) == 1

    assert lines[0].startswith(f"damaged sha256:{bad}: its content hashes to sha256:")
    assert "moved to " + os.fspath(store.quarantine_dir) in lines[0]
    assert "1 damaged" in lines[1] and "2 index entries dropped" in lines[1]
    assert not store.has_module(bad)
    assert store.has_module(good)
    assert store.module_for_manifest("sha256:" + "0c" * 32) is None
    assert store.manifest_for_reference("r.io/m:bad") is None
    assert store.module_for_manifest("sha256:" + "0d" * 32) == good
    assert [p.name.split(".")[0] for p in store.quarantine_dir.iterdir()] == [bad]
    assert fsck_command(store.root, out=lines.append) == 0  # fixed


def test_missing_and_odd_files_are_damaged(store: ModuleStore) -> None:
    missing, _ = add(store, "missing")
    linked, _ = add(store, "linked")
    (store.module_dir(missing) / MODULE_FILE).unlink()
    plugin = store.module_dir(linked) / MODULE_FILE
    plugin.unlink()
    plugin.symlink_to("/etc/hostname")

    report = check_store(store)

    problems = {d.digest: d.problem for d in report.damaged}
    assert problems[missing] == "plugin.wasm is missing"
    assert "cannot be opened" in problems[linked]  # a symlink is not followed
    assert report.checked == 2


def test_the_collector_goes_on_while_fsck_hashes(store: ModuleStore) -> None:
    """The hashing holds no lock: a collection (what a cold publish runs to make room)
    finishes while fsck is held in the middle of reading a module."""
    kept, _ = add(store, "being-hashed")
    old, _ = add(store, "old")
    os.utime(store.module_dir(old), (0, 0))
    records = VolumeRecords(store.root / "volumes")
    records.prepare()
    collector = CacheCollector(store, records, CacheSettings(ttl=3600))
    hashing, release = threading.Event(), threading.Event()

    def gate(name: str) -> None:
        if name == kept:
            hashing.set()
            assert release.wait(10)

    reports: list[FsckReport] = []
    fsck = threading.Thread(target=lambda: reports.append(check_store(store, hashing=gate)))
    fsck.start()
    try:
        assert hashing.wait(10)
        report = collector.collect()  # would wait for the whole fsck if it held .lock
        assert [e.digest for e in report.evicted] == [old]
    finally:
        release.set()
        fsck.join()
    assert reports[0].damaged == ()
    assert store.has_module(kept)


def test_a_module_replaced_after_it_was_hashed_is_checked_again(store: ModuleStore) -> None:
    """Damaged when hashed, evicted and pulled again (a new, good file) before the
    quarantine: the new file is checked, and stays."""
    module_hex, data = add(store, "replaced")
    corrupt(store, module_hex)
    calls: list[str] = []

    def replace_once(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:  # fsck holds the damaged file open; the store moves on
            with store.lock:
                moved = store.discard_locked(module_hex)
            assert moved is not None
            shutil.rmtree(moved)
            with store.temp_file() as (path, fd):
                os.write(fd, data)
                store.commit_module(path, module_hex)

    report = check_store(store, hashing=replace_once)

    assert calls == [module_hex, module_hex]
    assert report.damaged == () and report.checked == 1
    assert store.has_module(module_hex)
    assert not store.quarantine_dir.exists() or os.listdir(store.quarantine_dir) == []


def test_a_damaged_module_evicted_before_its_quarantine_is_reported(store: ModuleStore) -> None:
    module_hex, _ = add(store, "evicted")
    corrupt(store, module_hex)

    def evict(_name: str) -> None:
        with store.lock:
            moved = store.discard_locked(module_hex)
        assert moved is not None
        shutil.rmtree(moved)

    report = check_store(store, hashing=evict)

    [damaged] = report.damaged
    assert damaged.moved_to is None and damaged.left == "it vanished meanwhile"
    assert report.index_pruned == 0


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pod" / "mount"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        unmount(path)


def test_a_pod_keeps_its_mount_of_a_quarantined_module(store: ModuleStore, target: Path) -> None:
    bad, data = add(store, "mounted")
    bind_read_only(store.module_dir(bad), target)
    corrupt(store, bad)
    seen = (target / MODULE_FILE).read_bytes()

    report = check_store(store)

    assert [d.digest for d in report.damaged] == [bad]
    assert (target / MODULE_FILE).read_bytes() == seen  # what it had, not a vanished file
    assert seen != data


def test_no_cache_is_exit_2(tmp_path: Path) -> None:
    lines: list[str] = []
    assert fsck_command(tmp_path / "none", out=lines.append) == 2
    assert "holds no module cache" in lines[0]


def _cached_unchecked(store: ModuleStore, module: bytes) -> str:
    """What a version before validation left: a module that only had its header checked."""
    module_hex = hashlib.sha256(module).hexdigest()
    with store.temp_file() as (path, fd):
        os.write(fd, module)
        store.commit_module(path, module_hex)
    return module_hex


def test_an_invalid_module_is_quarantined_naming_the_validators_reason(
    store: ModuleStore,
) -> None:
    good, _ = add(store, "valid")
    truncated = make_module(3000, "cut")[:1500]
    bad = _cached_unchecked(store, truncated)
    lines: list[str] = []

    assert fsck_command(store.root, out=lines.append) == 1

    assert lines[0].startswith(
        f"damaged sha256:{bad}: it is not a valid WebAssembly module: unexpected end-of-file"
    )
    assert "1 damaged or invalid" in lines[1]
    assert not store.has_module(bad)
    assert store.has_module(good)


def test_fsck_writes_the_facts_of_every_sound_module_again(store: ModuleStore) -> None:
    plain = make_module(3000, "plain", proxy_wasm=False)
    module_hex = _cached_unchecked(store, plain)
    kept = store.facts.directory / f"{module_hex}.json"
    assert not kept.exists()
    check_store(store)
    # A fresh process reads what fsck wrote: valid, but no proxy-wasm ABI export.
    facts = KeptFacts(store.facts.directory).known(module_hex)
    assert facts is not None
    assert facts.structure_error is None
    assert facts.abi_versions == ()
    assert store.has_module(module_hex)  # valid for abi: any, so it stays
