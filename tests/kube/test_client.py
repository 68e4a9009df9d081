"""Tests of csi_wasm.kube.client: --kubeconfig reaches an API server from outside a cluster.

The API server is the tests' own (support.apiserver), over plain HTTP; the kubeconfig
is a file like ``kubectl config view --raw`` writes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support.apiserver import FakeConfigMapApiServer
from support.kubeconfig import KUBECONFIG_TOKEN as TOKEN
from support.kubeconfig import write_kubeconfig

from csi_wasm.attributes import PodInfo
from csi_wasm.kube.configmap import ConfigMapWatcher, watcher_from_environment
from csi_wasm.kube.events import (
    KubernetesEventRecorder,
    NullRecorder,
    recorder_from_environment,
)
from csi_wasm.prefetch.entries import PrefetchEntry

NS, NAME = "csi-wasm", "csi-wasm-prefetch"
POD = PodInfo("shop", "web-0", "6f1c2d3e-0000-4000-8000-000000000001")


@pytest.fixture
def outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def server() -> Iterator[FakeConfigMapApiServer]:
    with FakeConfigMapApiServer() as fake:
        yield fake


def test_events_reach_the_api_server_of_the_kubeconfig(
    outside: None, server: FakeConfigMapApiServer, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", server.url)

    recorder = recorder_from_environment("node-1", kubeconfig=kubeconfig)
    assert isinstance(recorder, KubernetesEventRecorder)
    recorder.failed(POD, "FailedPull", "registry.test is unreachable")
    recorder.close(timeout=10)

    [request] = server.requests
    assert (request.method, request.path, request.status) == (
        "POST",
        "/api/v1/namespaces/shop/events",
        201,
    )
    scheme, credential = request.headers["authorization"].split(" ", 1)
    assert (scheme.lower(), credential) == ("bearer", TOKEN)


def test_the_configmap_is_followed_through_the_kubeconfig(
    outside: None, server: FakeConfigMapApiServer, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", server.url)
    server.put_configmap(NS, NAME, {"prefetch.json": json.dumps(["registry.test/a:v1"])})
    seen: list[list[PrefetchEntry]] = []
    arrived = threading.Event()

    def on_change(entries: Sequence[PrefetchEntry]) -> None:
        seen.append(list(entries))
        arrived.set()

    watcher = watcher_from_environment(f"{NS}/{NAME}", on_change, kubeconfig=kubeconfig)
    assert isinstance(watcher, ConfigMapWatcher)
    watcher.start()
    try:
        assert arrived.wait(10)
    finally:
        watcher.stop()
    assert seen[0] == [PrefetchEntry("registry.test/a:v1")]


def test_a_broken_kubeconfig_is_logged_and_nothing_is_sent(
    outside: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")

    assert isinstance(recorder_from_environment("node-1", kubeconfig=broken), NullRecorder)
    assert watcher_from_environment(f"{NS}/{NAME}", print, kubeconfig=broken) is None

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert all(f"cannot use kubeconfig {broken}" in w for w in warnings)
    assert TOKEN not in caplog.text
