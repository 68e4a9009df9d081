"""Tests of csi_wasm.kube.configmap: following the prefetch ConfigMap with list+watch.

The watcher talks to a fake API server (``support.apiserver``) through the real
``kubernetes`` client, so paths, queries and the chunked watch stream are what a
cluster would see.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.apiserver import (
    SECRET_IN_ERRORS,
    FakeConfigMapApiServer,
    RecordedRequest,
    query_of,
)
from support.incluster import (
    at_api_server,
    broken_in_cluster_config,
    core_v1_api,
    imports_kubernetes,
    service_account,
)
from support.logs import logged_text, warnings_in
from support.prefetch import HEX_A, HEX_B, PINNED, A, B

from csi_wasm import __version__
from csi_wasm.kube.configmap import (
    ConfigMapWatcher,
    CoreV1ConfigMapApi,
    parse_configmap_ref,
    watcher_from_environment,
)
from csi_wasm.prefetch import (
    PrefetchEntry,
    Prefetcher,
)

NS = "csi-wasm"
NAME = "csi-wasm-prefetch"
TOKEN = "sa-token-5e1f0c2d9b"


# --- fakes and helpers ---------------------------------------------------------------


class Changes:
    """What the watcher handed to on_change, in order."""

    def __init__(self) -> None:
        self.lists: list[list[PrefetchEntry]] = []
        self._cond = threading.Condition()

    def __call__(self, entries: Sequence[PrefetchEntry]) -> None:
        with self._cond:
            self.lists.append(list(entries))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[list[PrefetchEntry]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.lists) >= count, timeout):
                raise AssertionError(f"{count} changes expected, got {self.lists}")
            return list(self.lists)


class Waits:
    """The watcher's backoff pauses: recorded and returned at once, except that after
    ``limit`` of them the watcher is held (so a test never spins) until released."""

    def __init__(self, limit: int = 10) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.released = threading.Event()
        self._cond = threading.Condition()

    def __call__(self, delay: float) -> bool:
        with self._cond:
            self.delays.append(delay)
            self._cond.notify_all()
            held = len(self.delays) > self.limit
        if held:
            self.released.wait(30)
        return False

    def wait_for(self, count: int, timeout: float = 10.0) -> list[float]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.delays) >= count, timeout):
                raise AssertionError(f"{count} pauses expected, got {self.delays}")
            return list(self.delays)


def listed(text: Any) -> dict[str, str]:
    return {"prefetch.json": text if isinstance(text, str) else json.dumps(text)}


def cm_requests(server: FakeConfigMapApiServer) -> list[RecordedRequest]:
    return [r for r in server.requests if "/configmaps" in r.path]


def kinds(server: FakeConfigMapApiServer) -> list[str]:
    """``list``/``watch`` per ConfigMap request, with the status when it was not 200."""
    shown = []
    for request in cm_requests(server):
        kind = "watch" if query_of(request).get("watch") == "true" else "list"
        shown.append(kind if request.status == 200 else f"{kind} {request.status}")
    return shown


def watch_versions(server: FakeConfigMapApiServer) -> list[str]:
    return [
        query_of(r)["resourceVersion"]
        for r in cm_requests(server)
        if query_of(r).get("watch") == "true"
    ]


@pytest.fixture
def server() -> Iterator[FakeConfigMapApiServer]:
    with FakeConfigMapApiServer() as fake:
        yield fake


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def make_watcher(
    server: FakeConfigMapApiServer, changes: Changes, waits: Waits
) -> Iterator[Callable[..., ConfigMapWatcher]]:
    made: list[ConfigMapWatcher] = []

    def make(api: Any = None, **options: Any) -> ConfigMapWatcher:
        options.setdefault("wait", waits)
        options.setdefault("jitter", lambda: 0.0)
        options.setdefault("min_healthy", 0.0)
        watcher = ConfigMapWatcher(
            api if api is not None else CoreV1ConfigMapApi(core_v1_api(server.url, TOKEN)),
            NS,
            NAME,
            options.pop("on_change", changes),
            **options,
        )
        made.append(watcher)
        watcher.start()
        return watcher

    yield make
    waits.released.set()
    for watcher in made:
        watcher.stop()


def wait_watching(server: FakeConfigMapApiServer, requests: int) -> None:
    """Until the watcher has made ``requests`` ConfigMap requests and one watch is open."""
    server.wait_for(lambda: len(cm_requests(server)) >= requests and server.open_watches == 1)


# --- the watcher ----------------------------------------------------------------------


def test_list_by_name_then_watch_from_its_version(
    server: FakeConfigMapApiServer,
    changes: Changes,
    make_watcher: Callable[..., ConfigMapWatcher],
) -> None:
    version = server.put_configmap(NS, NAME, listed([f"oci://{A}", {"url": B, "sha256": HEX_B}]))
    server.put_configmap(NS, "other", listed([PINNED]))

    make_watcher()
    wait_watching(server, 2)

    assert changes.wait_for(1) == [[PrefetchEntry(f"oci://{A}"), PrefetchEntry(B, HEX_B)]]
    first, second = cm_requests(server)
    path = f"/api/v1/namespaces/{NS}/configmaps"
    assert first.method == second.method == "GET"
    assert first.path.split("?")[0] == second.path.split("?")[0] == path
    assert f"fieldSelector=metadata.name%3D{NAME}" in first.path
    assert query_of(first) == {"fieldSelector": f"metadata.name={NAME}"}
    assert query_of(second) == {
        "fieldSelector": f"metadata.name={NAME}",
        "watch": "true",
        "resourceVersion": server.resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }
    assert server.resource_version != version  # the list's version, not the object's
    assert first.headers["authorization"] == f"Bearer {TOKEN}"


def test_added_modified_and_deleted_change_the_list(
    server: FakeConfigMapApiServer,
    changes: Changes,
    make_watcher: Callable[..., ConfigMapWatcher],
) -> None:
    make_watcher()
    wait_watching(server, 2)
    assert changes.wait_for(1) == [[]]  # no ConfigMap yet: nothing to prefetch

    server.put_configmap(NS, NAME, listed([A]))
    server.put_configmap(NS, NAME, listed([A, B]))
    server.put_configmap(NS, "other", listed([PINNED]))  # not ours: not even sent
    server.delete_configmap(NS, NAME)
    server.put_configmap(NS, NAME, listed([B]))

    assert changes.wait_for(5) == [
        [],
        [PrefetchEntry(A)],
        [PrefetchEntry(A), PrefetchEntry(B)],
        [],
        [PrefetchEntry(B)],
    ]
    assert kinds(server) == ["list", "watch"]


def test_an_unchanged_list_is_not_handed_on_again(
    server: FakeConfigMapApiServer,
    changes: Changes,
    make_watcher: Callable[..., ConfigMapWatcher],
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)
    server.put_configmap(NS, NAME, listed([A]))  # e.g. a label changed
    server.drop_watches()  # and a re-list finds the same text
    wait_watching(server, 4)
    server.put_configmap(NS, NAME, listed([B]))

    assert changes.wait_for(2) == [[PrefetchEntry(A)], [PrefetchEntry(B)]]


def test_a_clean_end_of_the_watch_watches_again_from_the_last_version(
    server: FakeConfigMapApiServer,
    changes: Changes,
    waits: Waits,
    make_watcher: Callable[..., ConfigMapWatcher],
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)
    changed = server.put_configmap(NS, NAME, listed([B]))
    changes.wait_for(2)

    server.end_watches()
    wait_watching(server, 3)

    assert kinds(server) == ["list", "watch", "watch"]
    assert watch_versions(server)[-1] == changed
    assert waits.delays == []


def test_a_bookmark_moves_the_version_to_watch_from(
    server: FakeConfigMapApiServer, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)
    server.put_configmap(NS, "other", {})  # the version moves; our watch sees nothing
    bookmark = server.bookmark()
    server.end_watches()
    wait_watching(server, 3)

    assert watch_versions(server) == [str(int(bookmark) - 1), bookmark]


def test_an_expired_watch_lists_again(
    server: FakeConfigMapApiServer,
    changes: Changes,
    waits: Waits,
    make_watcher: Callable[..., ConfigMapWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)

    server.expire_watches()  # ERROR 410 Expired in the stream, then its end
    wait_watching(server, 4)
    server.put_configmap(NS, NAME, listed([B]))

    assert changes.wait_for(2) == [[PrefetchEntry(A)], [PrefetchEntry(B)]]
    assert kinds(server) == ["list", "watch", "list", "watch"]
    assert waits.delays == []
    assert warnings_in(caplog) == []


def test_a_watch_from_a_compacted_version_lists_again(
    server: FakeConfigMapApiServer,
    changes: Changes,
    waits: Waits,
    make_watcher: Callable[..., ConfigMapWatcher],
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)

    server.put_configmap(NS, NAME, listed([B]))
    changes.wait_for(2)
    server.put_configmap(NS, "other", {})  # the version moves on without our watch
    server.compact()
    server.end_watches()  # the next watch starts from a compacted version: 410
    wait_watching(server, 5)

    assert kinds(server) == ["list", "watch", "watch", "list", "watch"]
    assert changes.wait_for(2)[-1] == [PrefetchEntry(B)]
    assert waits.delays == []


def test_a_410_answer_to_the_watch_lists_again(
    server: FakeConfigMapApiServer, waits: Waits, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)

    server.fail_next(410)
    server.end_watches()
    wait_watching(server, 5)

    assert kinds(server) == ["list", "watch", "watch 410", "list", "watch"]
    assert waits.delays == []


def test_a_dropped_stream_lists_again(
    server: FakeConfigMapApiServer,
    changes: Changes,
    waits: Waits,
    make_watcher: Callable[..., ConfigMapWatcher],
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)

    server.drop_watches()
    wait_watching(server, 4)
    server.put_configmap(NS, NAME, listed([B]))

    assert kinds(server) == ["list", "watch", "list", "watch"]
    assert changes.wait_for(2)[-1] == [PrefetchEntry(B)]
    assert waits.delays == []  # the watch had been fine: list again at once


def test_a_watch_that_fails_at_once_backs_off(
    server: FakeConfigMapApiServer,
    waits: Waits,
    make_watcher: Callable[..., ConfigMapWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher(min_healthy=3600.0)  # every watch ends "at once"
    wait_watching(server, 2)

    server.drop_watches()
    wait_watching(server, 4)
    server.end_watches()
    wait_watching(server, 6)

    assert waits.delays == [1.0, 2.0]
    assert kinds(server) == ["list", "watch"] * 3
    assert warnings_in(caplog) == [
        f"cannot watch ConfigMap {NS}/{NAME}: watch stream broken (ProtocolError)",
        f"the watch of ConfigMap {NS}/{NAME} ended at once",
    ]


def test_api_errors_back_off_and_are_logged_once(
    server: FakeConfigMapApiServer,
    changes: Changes,
    waits: Waits,
    make_watcher: Callable[..., ConfigMapWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="csi_wasm.kube.configmap")
    server.put_configmap(NS, NAME, listed([A]))
    server.fail_next(500, times=4)

    make_watcher()
    wait_watching(server, 6)
    server.put_configmap(NS, NAME, listed([B]))  # a healthy watch: recovered

    assert changes.wait_for(2) == [[PrefetchEntry(A)], [PrefetchEntry(B)]]
    assert waits.delays == [1.0, 2.0, 4.0, 8.0]
    assert kinds(server) == ["list 500"] * 4 + ["list", "watch"]
    message = f"cannot list ConfigMap {NS}/{NAME}: the API server answered 500"
    assert warnings_in(caplog) == [message]
    assert [r.getMessage() for r in caplog.records].count(message) == 4
    assert "following ConfigMap again" in [r.getMessage() for r in caplog.records]
    assert SECRET_IN_ERRORS not in logged_text(caplog)


def test_forbidden_says_what_to_grant(
    server: FakeConfigMapApiServer,
    changes: Changes,
    make_watcher: Callable[..., ConfigMapWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.fail_next(403, times=3)
    make_watcher()
    wait_watching(server, 5)

    [warning] = warnings_in(caplog)[:1]
    assert "refused (HTTP 403)" in warning
    assert "get, list and watch" in warning
    assert warnings_in(caplog).count(warning) == 1
    assert changes.wait_for(1) == [[]]
    assert SECRET_IN_ERRORS not in logged_text(caplog)


def test_an_error_event_in_the_watch_backs_off_and_lists_again(
    server: FakeConfigMapApiServer, waits: Waits, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    server.put_configmap(NS, NAME, listed([A]))
    make_watcher()
    wait_watching(server, 2)

    server.send_watch_event(
        "ERROR", {"kind": "Status", "status": "Failure", "reason": "InternalError", "code": 500}
    )
    wait_watching(server, 4)

    assert kinds(server) == ["list", "watch", "list", "watch"]
    assert waits.delays == [1.0]


def test_an_unreachable_api_server_never_raises(
    changes: Changes, waits: Waits, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    with FakeConfigMapApiServer() as gone:
        url = gone.url
    api = CoreV1ConfigMapApi(core_v1_api(url, TOKEN, retries=0), request_timeout=2.0)

    make_watcher(api=api)

    assert waits.wait_for(3)[:3] == [1.0, 2.0, 4.0]
    assert changes.lists == []  # errors keep the last list (here: none yet)


def test_a_configmap_without_the_key_or_with_bad_entries(
    server: FakeConfigMapApiServer,
    changes: Changes,
    make_watcher: Callable[..., ConfigMapWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.put_configmap(NS, NAME, {"other.json": "[]"})
    make_watcher()
    wait_watching(server, 2)
    server.put_configmap(NS, NAME, listed(["oci://Bad Ref", A]))
    server.put_configmap(NS, NAME, listed("not json"))

    assert changes.wait_for(3) == [[], [PrefetchEntry(A)], []]
    shown = warnings_in(caplog)
    assert (
        shown[0] == f"ConfigMap {NS}/{NAME} has no key 'prefetch.json': nothing to prefetch from it"
    )
    assert shown[1].startswith("prefetch list problem: entry 0 skipped:")
    assert shown[2].startswith("prefetch list problem: prefetch.json is not valid JSON")


def test_an_on_change_that_raises_does_not_stop_the_watcher(
    server: FakeConfigMapApiServer, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    seen = Changes()

    def on_change(entries: Sequence[PrefetchEntry]) -> None:
        seen(entries)
        raise RuntimeError("bug")

    server.put_configmap(NS, NAME, listed([A]))
    make_watcher(on_change=on_change)
    wait_watching(server, 2)
    server.put_configmap(NS, NAME, listed([B]))

    assert seen.wait_for(2) == [[PrefetchEntry(A)], [PrefetchEntry(B)]]


def test_stop_interrupts_an_open_watch(
    server: FakeConfigMapApiServer, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    before = set(threading.enumerate())
    watcher = make_watcher()
    wait_watching(server, 2)
    [thread] = [t for t in set(threading.enumerate()) - before if t.name.startswith("watch ")]
    assert thread.daemon

    started = time.monotonic()
    watcher.stop(timeout=10)

    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    server.wait_for(lambda: server.open_watches == 0)
    assert kinds(server) == ["list", "watch"]


def test_the_watcher_feeds_the_prefetcher(
    server: FakeConfigMapApiServer, make_watcher: Callable[..., ConfigMapWatcher]
) -> None:
    fetched: dict[str, str] = {A: HEX_A, B: HEX_B}
    prefetcher = Prefetcher(lambda request: fetched[str(request.source)])
    prefetcher.start()
    try:
        server.put_configmap(NS, NAME, listed([A]))
        make_watcher(on_change=prefetcher.set_dynamic)
        server.wait_for(lambda: prefetcher.pinned() == {HEX_A})
        server.put_configmap(NS, NAME, listed([B]))
        server.wait_for(lambda: prefetcher.pinned() == {HEX_B})
        server.delete_configmap(NS, NAME)
        server.wait_for(lambda: prefetcher.pinned() == set())
    finally:
        prefetcher.stop()


# --- wiring ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("csi-wasm/csi-wasm-prefetch", ("csi-wasm", "csi-wasm-prefetch")), ("a/b.c", ("a", "b.c"))],
)
def test_a_configmap_reference(text: str, parsed: tuple[str, str]) -> None:
    assert parse_configmap_ref(text) == parsed


@pytest.mark.parametrize("text", ["", "name", "/name", "ns/", "NS/name", "ns/a/b", "ns/Name"])
def test_a_bad_configmap_reference(text: str) -> None:
    with pytest.raises(ValueError, match="must be NAMESPACE/NAME"):
        parse_configmap_ref(text)


def test_no_watcher_without_a_configmap_or_outside_a_cluster(
    monkeypatch: pytest.MonkeyPatch, changes: Changes
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert watcher_from_environment(None, changes) is None
    assert watcher_from_environment(f"{NS}/{NAME}", changes) is None
    with pytest.raises(ValueError, match="--prefetch-configmap"):
        watcher_from_environment("no-slash", changes)


def test_a_broken_in_cluster_config_gives_no_watcher(
    monkeypatch: pytest.MonkeyPatch, changes: Changes, caplog: pytest.LogCaptureFixture
) -> None:
    broken_in_cluster_config(monkeypatch)

    assert watcher_from_environment(f"{NS}/{NAME}", changes) is None
    [warning] = warnings_in(caplog)
    assert "prefetch ConfigMap is not followed" in warning


def test_in_a_cluster_the_watcher_uses_the_service_account(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, changes: Changes
) -> None:
    tls = service_account(monkeypatch, tmp_path, TOKEN)
    with FakeConfigMapApiServer(tls=tls) as server:
        at_api_server(monkeypatch, server.port)
        server.put_configmap(NS, NAME, listed([A]))

        watcher = watcher_from_environment(f"{NS}/{NAME}", changes)
        assert isinstance(watcher, ConfigMapWatcher)
        watcher.start()
        try:
            wait_watching(server, 2)
            assert changes.wait_for(1) == [[PrefetchEntry(A)]]
        finally:
            watcher.stop()
        first = cm_requests(server)[0]
    scheme, credential = first.headers["authorization"].split(" ", 1)
    assert (scheme.lower(), credential) == ("bearer", TOKEN)
    assert first.headers["user-agent"] == f"csi-wasm/{__version__}"


def test_importing_the_module_does_not_load_the_kubernetes_client() -> None:
    assert not imports_kubernetes("csi_wasm.kube.configmap, csi_wasm.prefetch")
