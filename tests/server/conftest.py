"""Fixtures for driving a real csi-wasm server over its unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from support.driver import NodeDirs, StartDriver, in_process
from support.files import FileServer
from support.kubelet import Kubelet
from support.registry import Registry


@pytest.fixture
def start_driver(node_dirs: NodeDirs) -> Iterator[StartDriver]:
    """Start an in-process driver with the given PullSettings fields."""
    with ExitStack() as stack:

        def start(**pull: object) -> Kubelet:
            _driver, kubelet = stack.enter_context(
                in_process(node_dirs, node_dirs.settings(**pull))
            )
            return kubelet

        yield start


@pytest.fixture
def kubelet(start_driver: StartDriver, registry: Registry) -> Kubelet:
    """A driver that trusts the anonymous test registry over plain HTTP."""
    return start_driver(insecure_registries=frozenset({registry.host}))


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, FileServer]]:
    """A directory and the HTTP server that serves it (for modules named by URL)."""
    directory = tmp_path / "www"
    directory.mkdir()
    server = FileServer(directory)
    yield directory, server
    server.close()
