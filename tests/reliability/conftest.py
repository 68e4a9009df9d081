"""Fixtures of the reliability suite.

CI (``python3 -m pytest -q``) runs the tests of this directory that are not marked
``slow``; the slow ones are skipped unless the marker expression names them::

    python3 -m pytest -q -m slow tests/reliability          # only the slow ones
    python3 -m pytest -q -m "slow or not slow" tests/reliability   # all of them
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from support.driver import NodeDirs
from support.registry import Registry

from .faultproxy import FaultProxy, fault_proxy
from .harness import Process

StartProcess = Callable[..., Process]
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow reliability test: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") and item.path.is_relative_to(_HERE):
            item.add_marker(skip)


@pytest.fixture
def start_process(node_dirs: NodeDirs, registry: Registry) -> Iterator[StartProcess]:
    """Start ``csi-wasm serve`` processes for ``node_dirs``; all are killed at the end."""
    started: list[Process] = []

    def start(crash_at: str | None = None, extra_args: Sequence[str] = ()) -> Process:
        args = ["--insecure-registry", registry.host, *extra_args]
        process = Process(node_dirs, args, crash_at=crash_at).start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with ExitStack() as stack:
        yield stack.enter_context(fault_proxy(registry.url))
