"""What every benchmark starts from: a loopback registry and a `csi-wasm serve` process."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from reliability.faultproxy import FaultProxy, fault_proxy
from support.driver import DriverProcess, NodeDirs
from support.registry import Registry


@dataclass(frozen=True)
class LoopbackNode:
    base: Path  # a scratch directory removed afterwards
    registry: Registry
    dirs: NodeDirs
    driver: DriverProcess
    proxy: FaultProxy | None = None  # in front of the registry, when asked for


@contextmanager
def loopback_node(
    title: str, extra_args: Sequence[str] = (), *, with_proxy: bool = False
) -> Iterator[LoopbackNode]:
    """Start both, print ``title`` with the machine, and clean up mounts and processes.

    ``with_proxy``: also a fault-injecting proxy in front of the registry (see
    tests/reliability/faultproxy.py), which the driver trusts too.
    """
    with tempfile.TemporaryDirectory(prefix="csi-wasm-bench-") as work, ExitStack() as stack:
        base = Path(work)
        registry = Registry(base / "registry").start()
        stack.callback(registry.stop)
        hosts = [registry.host]
        proxy = stack.enter_context(fault_proxy(registry.url)) if with_proxy else None
        if proxy is not None:
            hosts.append(proxy.host)
        dirs = NodeDirs(base / "node")
        stack.callback(dirs.cleanup_mounts)
        flags = [arg for host in hosts for arg in ("--insecure-registry", host)]
        driver = DriverProcess(dirs, [*flags, *extra_args]).start()
        stack.callback(driver.terminate)
        machine = " ".join(platform.uname()[i] for i in (0, 2, 4))
        print(f"{title}: {machine}, {os.cpu_count()} cores, loopback registry")
        yield LoopbackNode(base, registry, dirs, driver, proxy)
