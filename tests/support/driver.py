"""Run csi-wasm for a test: in-process (fast) or as a real `csi-wasm serve` process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csi_wasm.mounts import mounts_under, unmount
from csi_wasm.server.serve import Driver, start
from csi_wasm.settings import NodeSettings, PullSettings, ServeSettings
from support.kubelet import Kubelet

StartDriver = Callable[..., Kubelet]


@dataclass
class NodeDirs:
    """Where one emulated node keeps things. The socket lives in a short path (108-byte limit)."""

    base: Path
    root: Path = field(init=False)
    kubelet_dir: Path = field(init=False)
    socket: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.kubelet_dir = self.base / "kubelet"
        (self.kubelet_dir / "pods").mkdir(parents=True, exist_ok=True)
        self.socket = Path(tempfile.mkdtemp(prefix="csiw-", dir="/tmp")) / "csi.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def settings(self, **pull: object) -> ServeSettings:
        return ServeSettings(
            node=NodeSettings(node_id="node-1", root=self.root, kubelet_dir=self.kubelet_dir),
            pull=PullSettings(**pull),  # type: ignore[arg-type]
            endpoint=self.endpoint,
            metrics_address="",
        )

    def serve_flags(self) -> list[str]:
        """`csi-wasm serve` flags for this node (metrics off: tests scrape in-process)."""
        return [
            "--endpoint", self.endpoint,
            "--node-id", "node-1",
            "--root", str(self.root),
            "--kubelet-dir", str(self.kubelet_dir),
            "--metrics-address", "",
        ]  # fmt: skip

    def cleanup_mounts(self) -> None:
        for mount_point in sorted(mounts_under(self.base), reverse=True):
            unmount(Path(mount_point))


def wait_for(condition: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def connect(dirs: NodeDirs) -> Iterator[Kubelet]:
    channel = grpc.insecure_channel(dirs.endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield Kubelet(dirs.kubelet_dir, channel)
    finally:
        channel.close()


@contextlib.contextmanager
def in_process(
    dirs: NodeDirs, settings: ServeSettings | None = None
) -> Iterator[tuple[Driver, Kubelet]]:
    driver = start(settings or dirs.settings())
    try:
        with connect(dirs) as kubelet:
            yield driver, kubelet
    finally:
        driver.stop(grace=0)


@dataclass
class DriverProcess:
    """`python -m csi_wasm serve` as kubelet's node would run it."""

    dirs: NodeDirs
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    code: Path | None = None  # run csi_wasm from this directory instead (another revision)

    def __post_init__(self) -> None:
        self.log_path = self.dirs.base / "driver.log"

    def start(self, ready_within: float = 10.0) -> DriverProcess:
        self.launch()
        wait_for(self.dirs.socket.exists, ready_within, what="the driver's socket")
        return self

    def launch(self) -> DriverProcess:
        """Start the process without waiting for its socket (fleets start many at once)."""
        env = os.environ.copy()
        if self.code is not None:
            env["PYTHONPATH"] = str(self.code)  # before the installed package
        args = [
            sys.executable,
            "-m",
            "csi_wasm",
            "serve",
            *self.dirs.serve_flags(),
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        # `python -m` puts the working directory first on sys.path: run another
        # revision from its own directory.
        self.process = subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=self.code)
        log.close()
        return self

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
