"""Read-only bind mounts through mount(2), checked against /proc/self/mountinfo.

Syscalls through libc instead of running mount(8): a warm publish is a handful of
microseconds of kernel work, and forking a process would dominate it. Mount state
is always read from mountinfo: ``os.path.ismount`` cannot see a bind mount of a
directory on the same filesystem.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
_MAX_STACKED = 64  # mounts stacked at one target that unmount() removes before giving up

READ_ONLY_OPTIONS = frozenset({"ro", "nosuid", "nodev", "noexec"})
MOUNTINFO = Path("/proc/self/mountinfo")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    root: str  # the path inside the source filesystem that is mounted
    options: frozenset[str]
    device: str = field(default="", compare=False)  # "major:minor" of the source filesystem


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _lines(path: Path) -> list[str]:
    """mountinfo's lines. Only newline ends a line (the kernel escapes it in paths; it does
    not escape \r or other line breaks), and paths need not be UTF-8: they decode as
    ``os.fsdecode`` would, so they compare equal to ``os.fspath`` of the same path."""
    return path.read_bytes().decode("utf-8", "surrogateescape").split("\n")


def read_mountinfo(path: Path = MOUNTINFO) -> list[MountEntry]:
    entries = []
    for line in _lines(path):
        fields = line.split(" ")
        if len(fields) < 6:
            continue
        entries.append(
            MountEntry(
                mount_point=_unescape(fields[4]),
                root=_unescape(fields[3]),
                options=frozenset(fields[5].split(",")),
                device=fields[2],
            )
        )
    return entries


@dataclass(frozen=True)
class SourcePath:
    """A directory as mountinfo names it when it is the source of a bind mount."""

    device: str  # major:minor of its filesystem
    path: str  # its path inside that filesystem

    def child(self, entry: MountEntry) -> str | None:
        """The name of this directory's child that ``entry`` mounts (or a path inside it)."""
        if entry.device != self.device:
            return None
        prefix = self.path.rstrip("/") + "/"
        if not entry.root.startswith(prefix):
            return None
        name = entry.root[len(prefix) :].split("/", 1)[0]
        return name or None


class MountTable:
    """The mount table read once, for the many questions of start-up and GC.

    Reading and parsing mountinfo costs about a millisecond per 300 mounts, so code
    that asks about every volume reads it once here instead of calling
    :func:`find_mount` per volume.
    """

    def __init__(self, entries: Iterable[MountEntry]) -> None:
        self.entries = list(entries)
        # later lines are mounted on top of earlier ones: the last one wins
        self._by_mount_point = {entry.mount_point: entry for entry in self.entries}

    @classmethod
    def read(cls, path: Path = MOUNTINFO) -> MountTable:
        return cls(read_mountinfo(path))

    def at(self, target: str) -> MountEntry | None:
        """The topmost mount at ``target``, if any."""
        return self._by_mount_point.get(target)

    def under(self, directory: Path) -> Iterator[MountEntry]:
        """Mounts whose mount point lies below ``directory``."""
        prefix = os.fspath(directory).rstrip("/") + "/"
        return (entry for entry in self.entries if entry.mount_point.startswith(prefix))

    def source_of(self, directory: Path) -> SourcePath | None:
        """How bind mounts of ``directory``'s children name their source, if it is mounted.

        The filesystem holding ``directory`` is the mount with the longest mount
        point above it; mountinfo gives the source as that filesystem's device and a
        path inside it, which need not be the path seen here (a hostPath in a
        container, a tmpfs mounted on ``--root``).
        """
        real = os.path.realpath(directory)
        best: MountEntry | None = None
        for entry in self.entries:
            point = entry.mount_point
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best.mount_point)):
                best = entry
        if best is None:
            return None
        relative = os.path.relpath(real, best.mount_point)
        path = best.root if relative == "." else posixpath.join(best.root, relative)
        return SourcePath(best.device, posixpath.normpath(path))

    def sources_from(self, directory: Path) -> dict[str, list[MountEntry]]:
        """Mounts of ``directory``'s children, by child name (e.g. a module's digest)."""
        source = self.source_of(directory)
        found: dict[str, list[MountEntry]] = {}
        if source is None:
            return found
        for entry in self.entries:
            name = source.child(entry)
            if name is not None:
                found.setdefault(name, []).append(entry)
        return found


def _escape(path: str) -> str:
    return (
        path.replace("\\", "\\134")
        .replace(" ", "\\040")
        .replace("\t", "\\011")
        .replace("\n", "\\012")
    )


def find_mount(target: Path, mountinfo: Path = MOUNTINFO) -> MountEntry | None:
    """The topmost mount at ``target``, if any.

    On the warm publish path with a thousand mounts on the node: a substring search
    of the raw text, then only the matching lines are parsed.
    """
    wanted = os.fspath(target)
    needle = f" {_escape(wanted)} "
    found = None
    for line in _lines(mountinfo):
        if needle not in line:
            continue
        fields = line.split(" ")
        if len(fields) >= 6 and _unescape(fields[4]) == wanted:
            # later lines are mounted on top of earlier ones
            found = MountEntry(
                wanted, _unescape(fields[3]), frozenset(fields[5].split(",")), fields[2]
            )
    return found


def mounts_under(directory: Path) -> list[str]:
    prefix = os.fspath(directory).rstrip("/") + "/"
    return [entry.mount_point for entry in read_mountinfo() if entry.mount_point.startswith(prefix)]


def _check(result: int, what: str, target: Path) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what} {target}: {os.strerror(code)}")


def bind_read_only(source: Path, target: Path) -> None:
    """Bind ``source`` at ``target`` read-only, nosuid, nodev, noexec.

    A bind mount takes the flags of its source until remounted, so it takes two calls;
    if the second fails, the first is undone and no writable mount is left behind.
    """
    src, dst = os.fsencode(source), os.fsencode(target)
    _check(_libc.mount(src, dst, None, MS_BIND, None), "bind mount", target)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(None, dst, None, flags, None) != 0:
        code = ctypes.get_errno()
        _libc.umount2(dst, MNT_DETACH)
        raise OSError(code, f"remount read-only {target}: {os.strerror(code)}")


def shows_read_only(source: Path, target: Path) -> bool:
    """True when ``target`` now shows ``source`` read-only, nosuid, nodev, noexec.

    Asked of the kernel for this one path (stat + statvfs) rather than by formatting
    the whole mount table, which costs about a millisecond per 300 mounts: this check
    runs on every publish. A freshly created target has its own inode, so showing the
    source's inode proves the bind mount is in place.
    """
    shown, wanted = os.stat(target), os.stat(source)
    if (shown.st_dev, shown.st_ino) != (wanted.st_dev, wanted.st_ino):
        return False
    required = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
    return os.statvfs(target).f_flag & required == required


def unmount(target: Path) -> None:
    """Remove every mount stacked at ``target``; a busy one is detached lazily.

    The kernel says when nothing is left (EINVAL: not a mount point; ENOENT or ENOTDIR:
    no such path), so no mount table is read: at a thousand mounts reading mountinfo cost
    ~5 ms a time. UMOUNT_NOFOLLOW refuses to follow a symlink at the target.
    """
    dst = os.fsencode(target)
    for _ in range(_MAX_STACKED):
        if _libc.umount2(dst, UMOUNT_NOFOLLOW) == 0:
            continue
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return
        if code != errno.EBUSY:
            raise OSError(code, f"unmount {target}: {os.strerror(code)}")
        # The module is read-only content: detaching it lets the last reader finish.
        _check(_libc.umount2(dst, MNT_DETACH | UMOUNT_NOFOLLOW), "unmount", target)
    raise OSError(errno.ELOOP, f"unmount {target}: more than {_MAX_STACKED} stacked mounts")


class KernelMounter:
    """The real mounter (see :class:`csi_wasm.node.Mounter`)."""

    def bind_read_only(self, source: Path, target: Path) -> None:
        bind_read_only(source, target)

    def unmount(self, target: Path) -> None:
        unmount(target)

    def find_mount(self, target: Path) -> MountEntry | None:
        return find_mount(target)

    def shows_read_only(self, source: Path, target: Path) -> bool:
        return shows_read_only(source, target)
