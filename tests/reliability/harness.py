"""The driver as a real process that can be killed, and the invariants checked after."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support.driver import NodeDirs, wait_for
from support.kubelet import PodVolume

CRASHING_DRIVER = Path(__file__).with_name("crashing_driver.py")
CRASH_ENV = "CSI_WASM_TEST_CRASH_AT"


@dataclass
class Process:
    """``csi-wasm serve`` (through :mod:`crashing_driver`) for one emulated node."""

    dirs: NodeDirs
    extra_args: Sequence[str] = ()
    crash_at: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.dirs.base / "driver.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Process:
        args = [
            sys.executable,
            str(CRASHING_DRIVER),
            "serve",
            *self.dirs.serve_flags(),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if self.crash_at is not None:
            env[CRASH_ENV] = self.crash_at
        self.dirs.socket.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        wait_for(
            lambda: self.dirs.socket.exists() or self.exited(),
            timeout=30,
            what="the driver's socket",
        )
        if self.exited():
            raise AssertionError(f"the driver exited at start:\n{self.log()[-3000:]}")
        return self

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait_killed(self, timeout: float = 20.0) -> None:
        """Wait until the process died of SIGKILL (its own crash point)."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        assert code == -signal.SIGKILL, f"exit status {code}, not SIGKILL:\n{self.log()[-3000:]}"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def terminate(self) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


# Invariants.


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _unescape(field: bytes) -> bytes:
    # the kernel escapes space, tab, newline and backslash in mountinfo as \ooo
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)


@dataclass(frozen=True)
class Mount:
    point: str
    root: str  # what is mounted: the path inside its filesystem
    options: frozenset[str]


def mountinfo() -> list[Mount]:
    """Every mount of this namespace, read independently of csi_wasm.mounts.

    Lines end at ``\n`` only and paths are bytes: a mount point may hold any other
    character, including ones ``str.splitlines`` would break at.
    """
    with open("/proc/self/mountinfo", "rb") as handle:
        text = handle.read()
    entries = []
    for line in text.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) >= 6:
            point, root = os.fsdecode(_unescape(fields[4])), os.fsdecode(_unescape(fields[3]))
            entries.append(Mount(point, root, frozenset(fields[5].decode().split(","))))
    return entries


def mounts_below(directory: Path) -> list[str]:
    prefix = os.fspath(directory).rstrip("/") + "/"
    return [m.point for m in mountinfo() if m.point.startswith(prefix)]


def mounts_at(target: Path | str) -> list[frozenset[str]]:
    """The options of every mount stacked at ``target``, bottom first."""
    wanted = os.fspath(target)
    return [m.options for m in mountinfo() if m.point == wanted]


def assert_cache_verified(dirs: NodeDirs) -> set[str]:
    """Every module under ``modules/`` hashes to its name; returns the names."""
    modules = dirs.root / "modules"
    names: set[str] = set()
    if not modules.is_dir():
        return names
    for entry in modules.iterdir():
        if entry.name.startswith("."):
            continue  # a hidden in-progress name is never served
        plugin = entry / "plugin.wasm"
        assert plugin.is_file(), f"module directory {entry.name} without plugin.wasm"
        assert sha256_file(plugin) == entry.name, f"unverified bytes served as {entry.name}"
        names.add(entry.name)
    return names


def assert_served(pod: PodVolume, module_sha256: str) -> None:
    """The pod sees exactly the verified module, through one read-only mount."""
    stacked = mounts_at(pod.target)
    assert len(stacked) == 1, f"{len(stacked)} mounts stacked at {pod.target}"
    assert stacked[0] >= {"ro", "nosuid", "nodev", "noexec"}, stacked[0]
    assert sorted(os.listdir(pod.target)) == ["plugin.wasm"]
    assert sha256_file(pod.target / "plugin.wasm") == module_sha256


def assert_nothing_left(dirs: NodeDirs, pods: Sequence[PodVolume]) -> None:
    """After every pod is unpublished: no mount, no target, no record."""
    assert mounts_below(dirs.kubelet_dir) == []
    for pod in pods:
        assert not os.path.lexists(pod.target), f"{pod.target} left behind"
    volumes = dirs.root / "volumes"
    if volumes.is_dir():
        assert [p.name for p in volumes.iterdir() if p.name.endswith(".json")] == []


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2


def force_unmount(target: Path | str) -> None:
    """Detach every mount stacked at ``target`` (at most 10), whatever its name holds."""
    for _ in range(10):
        if not mounts_at(target):
            return
        if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), f"umount2 {target!r}")
    raise AssertionError(f"mounts still stacked at {target!r}")


def tmp_files(dirs: NodeDirs) -> list[Path]:
    tmp = dirs.root / "tmp"
    return sorted(tmp.rglob("*")) if tmp.is_dir() else []
