"""Tests of csi_wasm.cache.fsck: damaged modules are quarantined, mounts of them keep working."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wasm import make_module

from csi_wasm.cache.fsck import check_store, fsck_command
from csi_wasm.cache.store import MODULE_FILE, ModuleStore
from csi_wasm.mounts import bind_read_only, unmount


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
    assert lines == ["checked 2 module(s), 6000 bytes: every module matches its digest"]


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
