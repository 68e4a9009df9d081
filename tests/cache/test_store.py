"""Tests of csi_wasm.cache.store: the content-addressed module cache on a real filesystem."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wasm import make_module

from csi_wasm.cache.store import MODULE_FILE, ModuleStore, is_sha256_hex, storage_error
from csi_wasm.errors import ResourceExhausted, Unavailable

MANIFEST_HEX = "ab" * 32
MANIFEST_DIGEST = f"sha256:{MANIFEST_HEX}"


def mount_tmpfs(directory: Path, *options: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=64k", *options))
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(directory)], check=True)


def umount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    s = ModuleStore(tmp_path / "root")
    s.prepare()
    return s


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards."""
    directory = tmp_path / "small"
    mount_tmpfs(directory)
    try:
        yield directory
    finally:
        umount(directory)


def commit_bytes(store: ModuleStore, data: bytes) -> tuple[str, Path]:
    """What the puller does: write into a temp file, hash, commit."""
    module_hex = hashlib.sha256(data).hexdigest()
    with store.temp_file() as (path, fd):
        os.write(fd, data)
        final = store.commit_module(path, module_hex)
    return module_hex, final


def tree(directory: Path) -> list[str]:
    return sorted(os.fspath(p.relative_to(directory)) for p in directory.rglob("*"))


# layout


def test_prepare_creates_layout(tmp_path: Path) -> None:
    root = tmp_path / "does" / "not" / "exist"
    s = ModuleStore(root)
    s.prepare()
    assert tree(root) == ["facts", "index", "index/manifests", "index/refs", "modules", "tmp"]
    assert s.modules_dir == root / "modules"
    assert s.tmp_dir == root / "tmp"


def test_prepare_empties_tmp_but_keeps_modules(store: ModuleStore, tmp_path: Path) -> None:
    module_hex, _ = commit_bytes(store, make_module(200, "keep"))
    store.record_manifest(MANIFEST_DIGEST, module_hex)

    (store.tmp_dir / "pull-half").write_bytes(b"\0asm half")
    nested = store.tmp_dir / "module-x" / "deeper"
    nested.mkdir(parents=True)
    (nested / MODULE_FILE).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (store.tmp_dir / "link-to-dir").symlink_to(outside)
    (store.tmp_dir / "dangling").symlink_to(tmp_path / "missing")

    store.prepare()

    assert list(store.tmp_dir.iterdir()) == []
    assert (outside / "precious").read_text() == "keep me"  # a symlink is not followed
    assert store.has_module(module_hex)
    assert store.module_for_manifest(MANIFEST_DIGEST) == module_hex


def test_prepare_is_idempotent(store: ModuleStore) -> None:
    before = tree(store.root)
    store.prepare()
    assert tree(store.root) == before


# modules


def test_commit_module_layout_and_modes(store: ModuleStore) -> None:
    data = make_module(4096, "commit")
    module_hex, final = commit_bytes(store, data)

    assert final == store.modules_dir / module_hex == store.module_dir(module_hex)
    assert os.listdir(final) == [MODULE_FILE]
    plugin = final / MODULE_FILE
    assert plugin.read_bytes() == data
    assert stat.S_IMODE(plugin.stat().st_mode) == 0o444
    assert stat.S_ISREG(plugin.lstat().st_mode)
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert store.has_module(module_hex)
    assert list(store.tmp_dir.iterdir()) == []


def test_commit_module_twice_is_idempotent(store: ModuleStore) -> None:
    data = make_module(1000, "twice")
    module_hex, first = commit_bytes(store, data)
    inode = (first / MODULE_FILE).stat().st_ino
    again_hex, second = commit_bytes(store, data)

    assert (again_hex, second) == (module_hex, first)
    assert (second / MODULE_FILE).stat().st_ino == inode  # the first copy stays
    assert (second / MODULE_FILE).read_bytes() == data
    assert os.listdir(store.modules_dir) == [module_hex]
    assert list(store.tmp_dir.iterdir()) == []


def test_commit_module_loses_race_gracefully(
    store: ModuleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another pull renamed the same digest in between our check and our rename."""
    data = make_module(500, "race")
    _, final = commit_bytes(store, data)
    inode = (final / MODULE_FILE).stat().st_ino

    real_has_module = store.has_module
    calls: list[str] = []

    def has_module(module_hex: str) -> bool:
        calls.append(module_hex)
        # the early check misses the other pull's module; the check after rename sees it
        return len(calls) > 1 and real_has_module(module_hex)

    monkeypatch.setattr(store, "has_module", has_module)

    _, again = commit_bytes(store, data)
    assert len(calls) == 2  # the rename failed and the second check decided
    assert again == final
    assert (final / MODULE_FILE).stat().st_ino == inode
    assert list(store.tmp_dir.iterdir()) == []


def test_temp_file_is_removed_on_error(store: ModuleStore) -> None:
    seen: list[Path] = []
    with pytest.raises(RuntimeError), store.temp_file() as (path, fd):
        os.write(fd, b"partial")
        seen.append(path)
        raise RuntimeError("download failed")
    assert seen[0].parent == store.tmp_dir
    assert not seen[0].exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_temp_file_tolerates_caller_closing_fd(store: ModuleStore) -> None:
    with store.temp_file() as (path, fd), os.fdopen(fd, "wb") as out:
        out.write(b"x")
    assert not path.exists()


def test_has_module_needs_the_file(store: ModuleStore) -> None:
    module_hex = "cd" * 32
    assert not store.has_module(module_hex)
    store.module_dir(module_hex).mkdir()
    assert not store.has_module(module_hex)
    (store.module_dir(module_hex) / MODULE_FILE).mkdir()
    assert not store.has_module(module_hex)


# index


def test_manifest_index_needs_the_module(store: ModuleStore) -> None:
    data = make_module(300, "index")
    module_hex = hashlib.sha256(data).hexdigest()
    assert store.module_for_manifest(MANIFEST_DIGEST) is None

    store.record_manifest(MANIFEST_DIGEST, module_hex)
    assert (store.manifests_dir / MANIFEST_HEX).read_text() == module_hex
    assert store.module_for_manifest(MANIFEST_DIGEST) is None  # module not stored yet

    commit_bytes(store, data)
    assert store.module_for_manifest(MANIFEST_DIGEST) == module_hex
    assert store.module_for_manifest(MANIFEST_HEX) == module_hex  # prefix optional


def test_manifest_index_overwrite(store: ModuleStore) -> None:
    first, _ = commit_bytes(store, make_module(300, "one"))
    second, _ = commit_bytes(store, make_module(300, "two"))
    store.record_manifest(MANIFEST_DIGEST, first)
    store.record_manifest(MANIFEST_DIGEST, second)
    assert store.module_for_manifest(MANIFEST_DIGEST) == second
    assert os.listdir(store.manifests_dir) == [MANIFEST_HEX]


def test_manifest_index_with_garbage_text_is_ignored(store: ModuleStore) -> None:
    (store.manifests_dir / MANIFEST_HEX).write_text("not a digest\n")
    assert store.module_for_manifest(MANIFEST_DIGEST) is None
    (store.manifests_dir / MANIFEST_HEX).write_text("")
    assert store.module_for_manifest(MANIFEST_DIGEST) is None


def test_manifest_index_with_binary_garbage_is_ignored(store: ModuleStore) -> None:
    (store.manifests_dir / MANIFEST_HEX).write_bytes(b"\xff\xfe\x00garbage")
    assert store.module_for_manifest(MANIFEST_DIGEST) is None


def test_reference_index_round_trip(store: ModuleStore) -> None:
    ref = "ghcr.io/acme/f:v1"
    assert store.manifest_for_reference(ref) is None
    store.record_reference(ref, MANIFEST_DIGEST)
    assert store.manifest_for_reference(ref) == MANIFEST_DIGEST
    assert store.manifest_for_reference("ghcr.io/acme/f:v2") is None

    moved = "sha256:" + "ef" * 32
    store.record_reference(ref, moved)
    assert store.manifest_for_reference(ref) == moved
    assert len(os.listdir(store.refs_dir)) == 1
    name = os.listdir(store.refs_dir)[0]
    assert is_sha256_hex(name)  # a reference is not used as a file name


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"text"',
        b'{"reference": "ghcr.io/other:v1", "manifest": "sha256:00"}',
        b'{"reference": "ghcr.io/acme/f:v1", "manifest": 42}',
        b'{"reference": "ghcr.io/acme/f:v1"}',
        b"",
    ],
)
def test_corrupt_reference_index_is_ignored(store: ModuleStore, content: bytes) -> None:
    ref = "ghcr.io/acme/f:v1"
    store.record_reference(ref, MANIFEST_DIGEST)
    (path,) = store.refs_dir.iterdir()
    path.write_bytes(content)
    assert store.manifest_for_reference(ref) is None


def test_reference_index_file_is_json(store: ModuleStore) -> None:
    store.record_reference("r.io/a:b", MANIFEST_DIGEST)
    (path,) = store.refs_dir.iterdir()
    assert json.loads(path.read_bytes()) == {"reference": "r.io/a:b", "manifest": MANIFEST_DIGEST}


# usable


def test_usable(tmp_path: Path) -> None:
    s = ModuleStore(tmp_path / "root")
    assert not s.usable()
    s.prepare()
    assert s.usable()
    s.modules_dir.rmdir()
    assert not s.usable()


def test_not_usable_on_read_only_filesystem(tmp_path: Path) -> None:
    s = ModuleStore(tmp_path / "root")
    s.prepare()
    mount_tmpfs(s.tmp_dir, "ro")  # root ignores mode bits; a read-only mount it cannot
    try:
        assert not s.usable()
    finally:
        umount(s.tmp_dir)
    assert s.usable()


# full disk


def fill(directory: Path) -> None:
    with pytest.raises(OSError) as info, (directory / "filler").open("wb") as out:
        out.write(b"\xaa" * (1024 * 1024))
    assert info.value.errno == errno.ENOSPC


def test_usable_on_a_full_disk_and_leaves_nothing_behind(small_disk: Path) -> None:
    s = ModuleStore(small_disk / "root")
    s.prepare()
    fill(small_disk)
    assert s.usable()  # full is capacity, not a broken root: GC can make room
    assert list(s.tmp_dir.iterdir()) == []


def test_full_disk_is_resource_exhausted(small_disk: Path) -> None:
    s = ModuleStore(small_disk / "root")
    s.prepare()
    fill(small_disk)

    with pytest.raises(ResourceExhausted) as info:
        s.record_manifest(MANIFEST_DIGEST, "cd" * 32)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert "full" in info.value.message
    assert "\n" not in info.value.message
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC

    with pytest.raises(ResourceExhausted):
        s.record_reference("ghcr.io/a:v1", MANIFEST_DIGEST)

    # nothing half-written is left behind, and the index still reads as empty
    assert list(s.manifests_dir.iterdir()) == []
    assert list(s.refs_dir.iterdir()) == []
    assert s.module_for_manifest(MANIFEST_DIGEST) is None
    assert s.manifest_for_reference("ghcr.io/a:v1") is None


def test_full_disk_keeps_previous_index_entry(small_disk: Path) -> None:
    s = ModuleStore(small_disk / "root")
    s.prepare()
    s.record_reference("ghcr.io/a:v1", MANIFEST_DIGEST)
    fill(small_disk)
    with pytest.raises(ResourceExhausted):
        s.record_reference("ghcr.io/a:v1", "sha256:" + "99" * 32)
    assert s.manifest_for_reference("ghcr.io/a:v1") == MANIFEST_DIGEST
    assert len(list(s.refs_dir.iterdir())) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_storage_error_maps_full_disk(code: int) -> None:
    mapped = storage_error(OSError(code, os.strerror(code)))
    assert isinstance(mapped, ResourceExhausted)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO, errno.EROFS, errno.EMFILE])
def test_storage_error_maps_an_unusable_root(code: int) -> None:
    mapped = storage_error(OSError(code, os.strerror(code), "/root/tmp/x"))
    assert isinstance(mapped, Unavailable)
    assert mapped.message.startswith("/root/tmp/x: ")


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOTDIR, errno.EINVAL])
def test_storage_error_keeps_other_errors(code: int) -> None:
    error = OSError(code, os.strerror(code))
    assert storage_error(error) is error


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("0123456789abcdef" * 4, True),
        ("0123456789ABCDEF" * 4, False),
        ("a" * 63, False),
        ("a" * 65, False),
        ("g" * 64, False),
        ("", False),
        ("sha256:" + "a" * 57, False),
    ],
)
def test_is_sha256_hex(value: str, ok: bool) -> None:
    assert is_sha256_hex(value) is ok


# pins, last use, eviction primitives


def test_pin_needs_the_module_and_counts(store: ModuleStore) -> None:
    module_hex, _ = commit_bytes(store, make_module(300, "pin"))
    assert not store.pin("cd" * 32)
    assert store.pin(module_hex)
    assert store.pin(module_hex)
    assert store.pinned() == {module_hex}
    store.unpin(module_hex)
    assert store.pinned() == {module_hex}
    store.unpin(module_hex)
    assert store.pinned() == set()
    store.unpin(module_hex)  # one too many is harmless
    assert store.pinned() == set()


def test_pin_marks_the_module_used_now(store: ModuleStore) -> None:
    module_hex, final = commit_bytes(store, make_module(300, "touch"))
    os.utime(final, (1_000_000, 1_000_000))
    assert store.cached_modules()[0].last_used == 1_000_000
    store.pin(module_hex)
    assert store.cached_modules()[0].last_used > 1_000_000
    os.utime(final, (1_000_000, 1_000_000))
    store.touch(module_hex)
    assert store.cached_modules()[0].last_used > 1_000_000
    store.touch("cd" * 32)  # not stored: nothing to do, no error


def test_commit_with_pin_pins_new_and_existing_modules(store: ModuleStore) -> None:
    data = make_module(300, "commit-pin")
    module_hex = hashlib.sha256(data).hexdigest()
    for _ in range(2):
        with store.temp_file() as (path, fd):
            os.write(fd, data)
            store.commit_module(path, module_hex, pin=True)
    assert store.pinned() == {module_hex}
    store.unpin(module_hex)
    assert store.pinned() == {module_hex}  # pinned twice: once per commit


def test_cached_modules_lists_size_and_skips_strangers(store: ModuleStore) -> None:
    data = make_module(5000, "listed")
    module_hex, _ = commit_bytes(store, data)
    (store.modules_dir / "not-a-digest").mkdir()
    (store.modules_dir / ("ef" * 32)).mkdir()  # no plugin.wasm: not a module
    [module] = store.cached_modules()
    assert (module.digest, module.size) == (module_hex, len(data))
    assert module.disk_bytes >= len(data)


def test_discard_and_restore(store: ModuleStore) -> None:
    data = make_module(300, "discard")
    module_hex, final = commit_bytes(store, data)
    with store.lock:
        moved = store.discard_locked(module_hex)
        assert store.discard_locked(module_hex) is None  # gone already
    assert moved is not None and moved.parent == store.trash_dir
    assert moved.name.startswith(module_hex + ".")
    assert not store.has_module(module_hex)
    assert not store.pin(module_hex)  # a pin misses a discarded module
    assert (moved / MODULE_FILE).read_bytes() == data
    assert store.restore(moved, module_hex)
    assert (final / MODULE_FILE).read_bytes() == data


def test_restore_refuses_when_stored_again(store: ModuleStore) -> None:
    data = make_module(300, "again")
    module_hex, _ = commit_bytes(store, data)
    with store.lock:
        moved = store.discard_locked(module_hex)
    assert moved is not None
    commit_bytes(store, data)
    assert not store.restore(moved, module_hex)
    assert moved.is_dir()


def test_watch_sees_pins_taken_and_released_meanwhile(store: ModuleStore) -> None:
    first, _ = commit_bytes(store, make_module(300, "w1"))
    second, _ = commit_bytes(store, make_module(300, "w2"))
    third, _ = commit_bytes(store, make_module(300, "w3"))
    store.pin(first)  # pinned before the watch, released during it
    store.watch_pins()
    store.unpin(first)
    store.pin(second)
    store.unpin(second)
    with store.lock:
        assert store.stop_watching_locked() == {first, second}
    store.pin(third)  # after the watch: not remembered
    with store.lock:
        assert store.stop_watching_locked() == {third}  # only the current pins


def test_quarantine_keeps_the_files(store: ModuleStore) -> None:
    data = make_module(300, "quarantine")
    module_hex, _ = commit_bytes(store, data)
    moved = store.quarantine(module_hex, "stamp")
    assert moved == store.quarantine_dir / f"{module_hex}.stamp"
    assert (moved / MODULE_FILE).read_bytes() == data
    assert not store.has_module(module_hex)
    assert store.quarantine(module_hex, "again") is None


def test_prune_index_drops_entries_leading_nowhere(store: ModuleStore) -> None:
    kept_hex, _ = commit_bytes(store, make_module(300, "kept"))
    store.record_manifest(MANIFEST_DIGEST, kept_hex)
    store.record_reference("r.io/a:kept", MANIFEST_DIGEST)
    store.record_manifest("sha256:" + "01" * 32, "02" * 32)  # module not stored
    store.record_reference("r.io/a:gone", "sha256:" + "01" * 32)
    store.record_reference("r.io/a:never", "sha256:" + "03" * 32)  # no manifest entry
    (store.manifests_dir / ("04" * 32)).write_bytes(b"\xff\xfe")
    (store.refs_dir / "garbage").write_text("{not json")
    (store.manifests_dir / ".in-progress").write_text("x")  # someone's write_atomic

    assert store.prune_index() == 5
    assert os.listdir(store.manifests_dir) == sorted([MANIFEST_HEX, ".in-progress"])
    assert len(os.listdir(store.refs_dir)) == 1
    assert store.manifest_for_reference("r.io/a:kept") == MANIFEST_DIGEST
    assert store.prune_index() == 0


def test_a_verdict_goes_with_its_module(store: ModuleStore) -> None:
    module_hex, _ = commit_bytes(store, make_module(300, "signed"))
    key_a, key_b = "a" * 64, "b" * 64
    assert not store.has_verdict(MANIFEST_DIGEST, key_a)
    store.record_verdict(MANIFEST_DIGEST, key_a, module_hex)
    assert store.has_verdict(MANIFEST_DIGEST, key_a)
    assert not store.has_verdict(MANIFEST_DIGEST, key_b)  # another key: verify again
    assert not store.has_verdict("sha256:" + "05" * 32, key_a)
    assert store.prune_index() == 0
    with store.lock:  # as the collector evicts
        trash = store.discard_locked(module_hex)
    assert trash is not None
    assert not store.has_verdict(MANIFEST_DIGEST, key_a)
    assert store.prune_index() == 1
    assert os.listdir(store.verdicts_dir) == []


def test_a_verdict_is_read_once_then_answered_from_memory_while_its_module_stays(
    store: ModuleStore,
) -> None:
    module_hex, _ = commit_bytes(store, make_module(300, "signed"))
    key = "a" * 64
    store.record_verdict(MANIFEST_DIGEST, key, module_hex)
    entry = store.verdicts_dir / f"{MANIFEST_DIGEST.removeprefix('sha256:')}.{key}"
    other = ModuleStore(store.root)  # e.g. after a restart: the file answers
    assert other.has_verdict(MANIFEST_DIGEST, key)
    entry.unlink()  # warm lookups read no file any more
    assert store.has_verdict(MANIFEST_DIGEST, key)
    assert other.has_verdict(MANIFEST_DIGEST, key)
    with store.lock:
        trash = store.discard_locked(module_hex)
    assert trash is not None
    assert not store.has_verdict(MANIFEST_DIGEST, key)  # evicted: forgotten
    assert store.restore(trash, module_hex)
    assert not store.has_verdict(MANIFEST_DIGEST, key)  # stored again: the file decides


def test_exclusive_holds_the_root_lock_file(store: ModuleStore) -> None:
    probe = os.open(store.lock_file, os.O_RDWR | os.O_CREAT)
    try:
        with store.exclusive(), pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
    finally:
        os.close(probe)


def test_prepare_counts_removed_leftovers(store: ModuleStore) -> None:
    (store.tmp_dir / "pull-1").write_bytes(b"x")
    (store.tmp_dir / "module-2").mkdir()
    assert store.prepare() == 2
    assert store.prepare() == 0
