"""Tests of csi_wasm.mounts: mountinfo parsing and real read-only bind mounts (needs root)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_wasm.mounts import (
    READ_ONLY_OPTIONS,
    KernelMounter,
    MountEntry,
    MountTable,
    SourcePath,
    bind_read_only,
    find_mount,
    mounts_under,
    read_mountinfo,
    shows_read_only,
    unmount,
)

MOUNTINFO_LINES = [
    r"22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    r"36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
    r"100 27 0:50 /modules/ab /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/my\040vol/mount"
    r" ro,nosuid,nodev,noexec,relatime shared:300 - ext4 /dev/sda1 rw",
    r"101 27 0:50 /tab\011here /mnt/new\012line\134back ro - tmpfs tmpfs rw",
    r"102 27 0:50 / /mnt/a\0401 rw - tmpfs tmpfs rw",
    r"103 27 0:50 / /mnt/short\04 rw - tmpfs tmpfs rw",
    r"104 27 0:50 / /mnt/parent rw,relatime - tmpfs tmpfs rw",
    "garbage line",
    "",
]
MOUNTINFO_FIXTURE = "\n".join(MOUNTINFO_LINES) + "\n"


def fixture_entries(tmp_path: Path) -> list[MountEntry]:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO_FIXTURE)
    return read_mountinfo(path)


# parsing


def test_read_mountinfo_fields(tmp_path: Path) -> None:
    entries = fixture_entries(tmp_path)
    assert len(entries) == 7  # the garbage and empty lines are skipped
    assert entries[0] == MountEntry(
        "/proc", "/", frozenset({"rw", "nosuid", "nodev", "noexec", "relatime"})
    )
    assert entries[1] == MountEntry("/mnt/parent", "/mnt1", frozenset({"rw", "noatime"}))


def test_read_mountinfo_octal_escapes(tmp_path: Path) -> None:
    entries = fixture_entries(tmp_path)
    assert entries[2].mount_point == (
        "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/my vol/mount"
    )
    assert entries[2].options >= READ_ONLY_OPTIONS
    assert entries[3].root == "/tab\there"
    assert entries[3].mount_point == "/mnt/new\nline\\back"
    assert entries[4].mount_point == "/mnt/a 1"  # a digit after the escape stays a digit
    assert entries[5].mount_point == "/mnt/short\\04"  # an incomplete escape is literal


def test_find_mount_in_fixture(tmp_path: Path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO_FIXTURE)
    # two mounts stacked at /mnt/parent: the later line is the topmost
    assert find_mount(Path("/mnt/parent"), path) == MountEntry(
        "/mnt/parent", "/", frozenset({"rw", "relatime"})
    )
    csi = Path("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/my vol/mount")
    entry = find_mount(csi, path)
    assert entry is not None
    assert entry.root == "/modules/ab"
    assert entry.options >= READ_ONLY_OPTIONS
    odd = find_mount(Path("/mnt/new\nline\\back"), path)
    assert odd is not None
    assert odd.root == "/tab\there"
    assert find_mount(Path("/proc"), path) is not None


@pytest.mark.parametrize(
    "target",
    [
        "/mnt1",  # only a root field, not a mount point
        "/mnt",  # a prefix of mount points
        "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/my",  # cut at the escaped space
        "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/my\\040vol/mount",
        "/mnt/par",
        "/nowhere",
    ],
)
def test_find_mount_in_fixture_no_match(tmp_path: Path, target: str) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO_FIXTURE)
    assert find_mount(Path(target), path) is None


def test_find_mount_agrees_with_read_mountinfo(tmp_path: Path) -> None:
    """The fast path (substring search) finds what a full parse finds, for every mount.

    Both read one snapshot of this machine's mount table: other processes mount and
    remount while the test runs, and the live table could differ between two reads.
    """
    snapshot = tmp_path / "mountinfo"
    snapshot.write_bytes(Path("/proc/self/mountinfo").read_bytes())
    entries = read_mountinfo(snapshot)
    topmost = {entry.mount_point: entry for entry in entries}
    assert topmost
    for mount_point, entry in topmost.items():
        assert find_mount(Path(mount_point), snapshot) == entry


def test_read_mountinfo_of_this_process() -> None:
    entries = read_mountinfo()
    assert any(entry.mount_point == "/" for entry in entries)
    assert all(entry.mount_point.startswith("/") for entry in entries)


# real mounts


def _mount_points_below(directory: Path) -> list[str]:
    prefix = os.fspath(directory) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A directory for mounts; whatever a test leaves mounted below it is detached."""
    directory = tmp_path / "m"
    directory.mkdir()
    try:
        yield directory
    finally:
        for _ in range(10):
            left = _mount_points_below(directory)
            if not left:
                break
            for point in reversed(left):
                subprocess.run(
                    ["umount", "-l", point.replace("\\040", " ")], check=False, capture_output=True
                )
        assert _mount_points_below(directory) == []


def make_source(base: Path, name: str = "src", content: bytes = b"\0asm\x01\0\0\0") -> Path:
    source = base / name
    source.mkdir()
    plugin = source / "plugin.wasm"
    plugin.write_bytes(content)
    plugin.chmod(0o444)
    return source


def make_target(base: Path, name: str = "target") -> Path:
    target = base / name
    target.mkdir(parents=True)
    return target


def test_bind_read_only(base: Path) -> None:
    source = make_source(base)
    target = make_target(base)
    bind_read_only(source, target)

    entry = find_mount(target)
    assert entry is not None
    assert entry.mount_point == os.fspath(target)
    assert entry.options >= READ_ONLY_OPTIONS
    assert "rw" not in entry.options
    assert entry.root.endswith("/src")
    assert (target / "plugin.wasm").read_bytes() == b"\0asm\x01\0\0\0"
    # os.path.ismount cannot see a bind mount on the same filesystem; mountinfo can
    assert not os.path.ismount(target)
    assert find_mount(source) is None

    unmount(target)
    assert find_mount(target) is None
    assert list(target.iterdir()) == []


def test_shows_read_only(base: Path) -> None:
    source = make_source(base)
    target = make_target(base)
    assert not shows_read_only(source, target)  # not mounted: the target's own inode
    bind_read_only(source, target)
    try:
        assert shows_read_only(source, target)
        assert KernelMounter().shows_read_only(source, target)
        other = make_source(base, "other")
        assert not shows_read_only(other, target)  # shows a different directory
    finally:
        unmount(target)
    assert not shows_read_only(source, target)


def test_shows_read_only_refuses_a_writable_bind(base: Path) -> None:
    source = make_source(base)
    target = make_target(base)
    subprocess.run(["mount", "--bind", os.fspath(source), os.fspath(target)], check=True)
    try:
        assert not shows_read_only(source, target)  # right content, wrong flags
        entry = find_mount(target)
        assert entry is not None
        assert "rw" in entry.options
    finally:
        unmount(target)
    assert find_mount(target) is None


def test_read_only_mount_refuses_writes(base: Path) -> None:
    source = make_source(base)
    target = make_target(base)
    bind_read_only(source, target)
    try:
        with pytest.raises(OSError) as created:
            (target / "new").write_bytes(b"x")
        with pytest.raises(OSError) as chmodded:
            os.chmod(target / "plugin.wasm", 0o644)
        with pytest.raises(OSError) as removed:
            (target / "plugin.wasm").unlink()
        with pytest.raises(OSError) as made:
            (target / "dir").mkdir()
        for info in (created, chmodded, removed, made):
            assert info.value.errno == errno.EROFS

        # the source stays writable, and the mount shows its changes
        (source / "later").write_bytes(b"y")
        assert (target / "later").read_bytes() == b"y"
    finally:
        unmount(target)


def test_read_only_mount_is_noexec(base: Path) -> None:
    source = make_source(base)
    script = source / "run.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    assert subprocess.run([os.fspath(script)], check=False).returncode == 0
    target = make_target(base)
    bind_read_only(source, target)
    try:
        with pytest.raises(PermissionError):
            subprocess.run([os.fspath(target / "run.sh")], check=False)
    finally:
        unmount(target)


def test_target_with_space_in_name(base: Path) -> None:
    source = make_source(base)
    target = make_target(base, "my vol/mount")
    bind_read_only(source, target)
    try:
        entry = find_mount(target)
        assert entry is not None
        assert entry.mount_point == os.fspath(target)
        assert mounts_under(base) == [os.fspath(target)]
    finally:
        unmount(target)
    assert find_mount(target) is None


def test_unmount_removes_stacked_mounts(base: Path) -> None:
    first = make_source(base, "first", b"first")
    second = make_source(base, "second", b"second")
    target = make_target(base)
    bind_read_only(first, target)
    bind_read_only(second, target)

    entry = find_mount(target)
    assert entry is not None
    assert entry.root.endswith("/second")  # the topmost one
    assert (target / "plugin.wasm").read_bytes() == b"second"
    assert _mount_points_below(base).count(os.fspath(target)) == 2

    unmount(target)
    assert find_mount(target) is None
    assert _mount_points_below(base) == []


def test_unmount_busy_mount_detaches(base: Path) -> None:
    source = make_source(base, content=b"busy content")
    target = make_target(base)
    bind_read_only(source, target)
    with open(target / "plugin.wasm", "rb") as reader:
        unmount(target)
        assert find_mount(target) is None
        assert reader.read() == b"busy content"  # the last reader finishes


def test_unmount_of_non_mount_is_a_no_op(base: Path) -> None:
    plain = make_target(base, "plain")
    (plain / "keep").write_bytes(b"k")
    unmount(plain)
    assert (plain / "keep").read_bytes() == b"k"
    unmount(base / "does-not-exist")


def test_bind_to_missing_target_fails_cleanly(base: Path) -> None:
    source = make_source(base)
    with pytest.raises(OSError) as info:
        bind_read_only(source, base / "missing")
    assert info.value.errno == errno.ENOENT
    assert "bind mount" in str(info.value)
    assert _mount_points_below(base) == []


def test_bind_from_missing_source_fails_cleanly(base: Path) -> None:
    target = make_target(base)
    with pytest.raises(OSError) as info:
        bind_read_only(base / "missing", target)
    assert info.value.errno == errno.ENOENT
    assert find_mount(target) is None


def test_mounts_under(base: Path) -> None:
    source = make_source(base)
    t1 = make_target(base, "a/t1")
    t2 = make_target(base, "a/t2/deeper")
    t3 = make_target(base, "ab/t3")  # a sibling whose name starts like "a"
    for target in (t1, t2, t3):
        bind_read_only(source, target)
    try:
        expected = sorted([os.fspath(t1), os.fspath(t2)])
        assert sorted(mounts_under(base / "a")) == expected
        assert sorted(mounts_under(Path(f"{base}/a/"))) == expected
        assert mounts_under(base / "ab") == [os.fspath(t3)]
        assert mounts_under(t1) == []  # the mount itself is not "under" it
        assert mounts_under(base / "nothing") == []
    finally:
        for target in (t1, t2, t3):
            unmount(target)
    assert mounts_under(base) == []


def test_kernel_mounter(base: Path) -> None:
    mounter = KernelMounter()
    source = make_source(base)
    target = make_target(base)
    assert mounter.find_mount(target) is None
    mounter.bind_read_only(source, target)
    try:
        entry = mounter.find_mount(target)
        assert entry is not None
        assert entry.options >= READ_ONLY_OPTIONS
    finally:
        mounter.unmount(target)
    assert mounter.find_mount(target) is None


# the mount table read once


def test_mount_table_indexes_the_topmost_mount(tmp_path: Path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO_FIXTURE)
    table = MountTable.read(path)
    assert table.at("/mnt/parent") == MountEntry("/mnt/parent", "/", frozenset({"rw", "relatime"}))
    assert table.at("/mnt/parent").device == "0:50"  # type: ignore[union-attr]
    assert table.at("/mnt/elsewhere") is None
    assert [e.mount_point for e in table.under(Path("/var/lib/kubelet/pods"))] == [
        "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/my vol/mount"
    ]


def test_source_of_a_directory_and_its_mounted_children(tmp_path: Path) -> None:
    lines = [
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw",
        "2 1 8:2 /data/csi /var/lib/csi-wasm rw - ext4 /dev/sdb rw",
        "3 1 8:2 /data/csi/modules/aa /pods/1/mount ro - ext4 /dev/sdb rw",
        "4 1 8:2 /data/csi/modules/bb/plugin.wasm /pods/2/file ro - ext4 /dev/sdb rw",
        "5 1 8:1 /var/lib/csi-wasm/modules/cc /pods/3/mount ro - ext4 /dev/sda1 rw",
        "6 1 8:2 /data/csi/trash/dd.1234 /pods/4/mount ro - ext4 /dev/sdb rw",
        "7 1 8:2 /data/csi/modulesx/ee /pods/5/mount ro - ext4 /dev/sdb rw",
    ]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    table = MountTable.read(path)
    # realpath of a path that does not exist here is itself
    modules = Path("/var/lib/csi-wasm/modules")
    assert table.source_of(modules) == SourcePath("8:2", "/data/csi/modules")
    assert table.source_of(Path("/var/lib/csi-wasm")) == SourcePath("8:2", "/data/csi")
    assert table.source_of(Path("/etc")) == SourcePath("8:1", "/etc")
    found = table.sources_from(modules)
    # same device and path only: cc (other device), ee (other directory) are not ours
    assert {name: [e.mount_point for e in entries] for name, entries in found.items()} == {
        "aa": ["/pods/1/mount"],
        "bb": ["/pods/2/file"],
    }
    assert set(table.sources_from(Path("/var/lib/csi-wasm/trash"))) == {"dd.1234"}


def test_sources_from_sees_real_bind_mounts(base: Path) -> None:
    modules = base / "modules"
    modules.mkdir()
    source = make_source(modules, "ab" * 32)
    target = make_target(base, "pod/mount")
    bind_read_only(source, target)
    table = MountTable.read()
    assert [e.mount_point for e in table.sources_from(modules)["ab" * 32]] == [os.fspath(target)]
    trash = base / "trash"
    trash.mkdir()
    os.rename(source, trash / "moved")  # the kernel follows the rename
    assert set(MountTable.read().sources_from(trash)) == {"moved"}
    assert MountTable.read().sources_from(modules) == {}
    unmount(target)
