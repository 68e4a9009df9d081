"""What every benchmark starts from: a loopback registry and a `csi-wasm serve` process."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.driver import DriverProcess, NodeDirs
from support.registry import Registry


@dataclass(frozen=True)
class LoopbackNode:
    base: Path  # a scratch directory removed afterwards
    registry: Registry
    dirs: NodeDirs
    driver: DriverProcess


@contextmanager
def loopback_node(title: str, extra_args: Sequence[str] = ()) -> Iterator[LoopbackNode]:
    """Start both, print ``title`` with the machine, and clean up mounts and processes."""
    with tempfile.TemporaryDirectory(prefix="csi-wasm-bench-") as work:
        base = Path(work)
        registry = Registry(base / "registry").start()
        dirs = NodeDirs(base / "node")
        driver = DriverProcess(dirs, ["--insecure-registry", registry.host, *extra_args]).start()
        machine = " ".join(platform.uname()[i] for i in (0, 2, 4))
        print(f"{title}: {machine}, {os.cpu_count()} cores, loopback registry")
        try:
            yield LoopbackNode(base, registry, dirs, driver)
        finally:
            driver.terminate()
            dirs.cleanup_mounts()
            registry.stop()
