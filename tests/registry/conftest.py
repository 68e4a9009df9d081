"""Fixtures for the registry client tests: fake servers, a fake clock, a client factory."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csi_wasm.registry import RegistryClient, RegistryOptions

from .fake_registry import FakeServer, TlsFiles, make_self_signed


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps:
    """An injectable ``sleep`` that records what it was asked and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """The registry: plain http on 127.0.0.1."""
    with FakeServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def storage() -> Iterator[FakeServer]:
    """Blob storage on another host (127.0.0.2) for redirects."""
    with FakeServer("127.0.0.2") as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_fake(tls_files: TlsFiles) -> Iterator[FakeServer]:
    """A registry on https://127.0.0.1 with a self-signed certificate."""
    with FakeServer("127.0.0.1", tls=(tls_files.cert, tls_files.key)) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


ClientFactory = Callable[..., RegistryClient]


@pytest.fixture
def make_client(clock: FakeClock, sleeps: Sleeps) -> Iterator[ClientFactory]:
    """Build clients with the fake clock and recorded sleeps; all closed at the end."""
    clients: list[RegistryClient] = []

    def factory(*insecure: str, ca_file: Path | None = None, **options: object) -> RegistryClient:
        client = RegistryClient(
            RegistryOptions(
                insecure_registries=frozenset(insecure),
                ca_file=str(ca_file) if ca_file else None,
                **options,  # type: ignore[arg-type]
            ),
            sleep=sleeps,
            clock=clock,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
