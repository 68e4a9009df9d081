"""Shared fixtures: real registries and tools.  The logic lives in ``tests/support``."""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.confinement import SESSION_GUARD
from support.driver import NodeDirs
from support.registry import Registry
from support.tools import ContainersTools


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous ``docker-registry`` on 127.0.0.1 for the whole session."""
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg.start()
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An htpasswd (Basic auth) registry; ``.credentials`` is ``(username, password)``."""
    reg = Registry(tmp_path_factory.mktemp("auth-registry"), auth=True)
    try:
        yield reg.start()
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def container_tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainersTools]:
    """buildah/skopeo with private storage; caches built images for the session."""
    tools = ContainersTools(tmp_path_factory.mktemp("containers"))
    try:
        yield tools
    finally:
        tools.close()


@pytest.fixture
def node_dirs(tmp_path: Path) -> Iterator[NodeDirs]:
    """An emulated node: driver root, kubelet dir, socket path; mounts removed afterwards."""
    dirs = NodeDirs(tmp_path)
    try:
        yield dirs
    finally:
        dirs.cleanup_mounts()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses, e.g. ``t/test-pull-twice-3f9a1c``."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t/{slug or 'test'}-{secrets.token_hex(3)}"


sys.addaudithook(SESSION_GUARD)


@pytest.fixture(autouse=True)
def reads_stay_in_the_repository() -> Iterator[None]:
    """Fail a test that read a file beside the repository (a fresh clone would not have it)."""
    SESSION_GUARD.take()
    yield
    outside = SESSION_GUARD.take()
    assert not outside, f"the test read outside the repository: {sorted(set(outside))}"
