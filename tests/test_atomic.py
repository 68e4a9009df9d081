"""Tests of csi_wasm.atomic: crash-safe writes and removals."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csi_wasm.atomic import fsync_dir, remove, write_atomic


def test_write_atomic_creates_file(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_atomic(path, b'{"a": 1}')
    assert path.read_bytes() == b'{"a": 1}'
    assert os.listdir(tmp_path) == ["record.json"]


def test_write_atomic_replaces_content_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "record"
    path.write_bytes(b"old content that is longer than the new one")
    old_inode = path.stat().st_ino
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != old_inode  # renamed over, not rewritten in place
    assert os.listdir(tmp_path) == ["record"]


def test_write_atomic_empty_data(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"something")
    write_atomic(path, b"")
    assert path.read_bytes() == b""


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o444, 0o755])
def test_write_atomic_mode_is_honoured(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "f"
    old_umask = os.umask(0o077)  # the mode is set explicitly, not through the umask
    try:
        write_atomic(path, b"x", mode=mode)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_write_atomic_default_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o600)
    write_atomic(path, b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_atomic_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"target")
    link = tmp_path / "link"
    link.symlink_to(target)
    write_atomic(link, b"new")
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"
    assert target.read_bytes() == b"target"


def test_write_atomic_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"x")


def test_failure_keeps_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "record"
    path.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError) as info:
        write_atomic(path, b"new")
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["record"]


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_durable_write_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_fsyncs(monkeypatch)
    write_atomic(tmp_path / "f", b"x")
    assert len(calls) == 2  # the file, then its directory


def test_non_durable_write_skips_fsync_but_is_still_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    old_inode = path.stat().st_ino
    calls = count_fsyncs(monkeypatch)
    write_atomic(path, b"new", 0o600, durable=False)
    assert calls == []
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != old_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_remove_durable_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "b").write_bytes(b"")
    calls = count_fsyncs(monkeypatch)
    assert remove(tmp_path / "a", durable=False) is True
    assert calls == []
    assert remove(tmp_path / "b") is True
    assert len(calls) == 1  # the directory
    assert remove(tmp_path / "b") is False
    assert len(calls) == 1  # nothing to make durable
    assert os.listdir(tmp_path) == []


def test_failed_rename_removes_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "is-a-dir"
    (target / "child").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert sorted(os.listdir(tmp_path)) == ["is-a-dir"]
    assert os.listdir(target) == ["child"]


def test_full_disk_keeps_old_content(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        path = disk / "record"
        path.write_bytes(b"old")
        with pytest.raises(OSError) as filled, (disk / "filler").open("wb") as out:
            out.write(b"\0" * (1024 * 1024))
        assert filled.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as info:
            write_atomic(path, b"n" * 8192)
        assert info.value.errno == errno.ENOSPC
        assert path.read_bytes() == b"old"
        assert sorted(os.listdir(disk)) == ["filler", "record"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=4096))
def test_write_atomic_round_trip(data: bytes) -> None:
    import tempfile  # noqa: PLC0415 - hypothesis forbids function-scoped fixtures

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "f"
        write_atomic(path, b"previous")
        write_atomic(path, data)
        assert path.read_bytes() == data
        assert os.listdir(directory) == ["f"]


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "gone"
    path.write_bytes(b"x")
    assert remove(path) is True
    assert not path.exists()
    assert remove(path) is False


def test_remove_removes_link_not_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert remove(link) is True
    assert not link.is_symlink()
    assert target.read_bytes() == b"x"


def test_remove_missing_directory(tmp_path: Path) -> None:
    assert remove(tmp_path / "no" / "such") is False


def test_fsync_dir(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        (tmp_path / "file").write_bytes(b"")
        fsync_dir(tmp_path / "file")
