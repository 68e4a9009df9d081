"""Tests of csi_wasm.kube.events: Events on the pod, sent in the background, aggregated.

The recorder talks to a fake API server (``support.apiserver``) through the real
``kubernetes`` client, so paths, verbs, headers and bodies are what a cluster would see.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.apiserver import SECRET_IN_ERRORS, FakeApiServer, RecordedRequest
from support.incluster import (
    at_api_server,
    broken_in_cluster_config,
    core_v1_api,
    imports_kubernetes,
    service_account,
)
from support.logs import logged_text

from csi_wasm import __version__
from csi_wasm.attributes import PodInfo
from csi_wasm.kube.events import (
    REASON_FAILED_PULL,
    REASON_INVALID_MODULE,
    REASON_PULLED,
    EventsApiError,
    KubernetesEventRecorder,
    NullRecorder,
    pulled_message,
    recorder_from_environment,
)

TOKEN = "sa-token-7b2f1c9e0d"
POD = PodInfo(namespace="shop", name="web-0", uid="6f1c2d3e-0000-4000-8000-000000000001")
NODE = "node-1"
START = datetime(2026, 1, 1, tzinfo=UTC)
DIGEST = "0123456789abcdef" * 4
MESSAGE = (
    "cannot pull oci://ghcr.io/acme/f:v1: registry ghcr.io answered 503; "
    "kubelet will retry (check the registry's status)"
)
EVENTS_PATH = "/api/v1/namespaces/shop/events"


class FakeClock:
    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now


def parse_time(value: object) -> datetime:
    assert isinstance(value, str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|\+00:00)", value), value
    return datetime.fromisoformat(value)


def message_of(request: RecordedRequest) -> str:
    assert isinstance(request.body, dict)
    message = request.body["message"]
    assert isinstance(message, str)
    return message


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as fake:
        yield fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Factory = Callable[..., KubernetesEventRecorder]


@pytest.fixture
def make_recorder(server: FakeApiServer, clock: FakeClock) -> Iterator[Factory]:
    made: list[KubernetesEventRecorder] = []

    def make(api: object = None, **options: Any) -> KubernetesEventRecorder:
        options.setdefault("node_name", NODE)
        options.setdefault("clock", clock)
        recorder = KubernetesEventRecorder(
            api if api is not None else core_v1_api(server.url, TOKEN), **options
        )
        made.append(recorder)
        return recorder

    yield make
    server.release()
    for recorder in made:
        recorder.close(timeout=5)


@pytest.fixture
def recorder(make_recorder: Factory) -> KubernetesEventRecorder:
    return make_recorder()


# --- what goes on the wire ------------------------------------------------------------


def test_a_failure_is_posted_as_a_warning_event_on_the_pod(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.close()

    [request] = server.requests
    assert (request.method, request.path, request.status) == ("POST", EVENTS_PATH, 201)
    assert request.content_type == "application/json"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    body = request.body
    assert isinstance(body, dict)
    assert body["apiVersion"] == "v1"
    assert body["kind"] == "Event"
    assert body["metadata"]["namespace"] == "shop"
    assert re.fullmatch(r"web-0\.[0-9a-f]{16}", body["metadata"]["name"])
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-0",
        "namespace": "shop",
        "uid": POD.uid,
    }
    assert body["reason"] == "FailedPull"
    assert body["message"] == MESSAGE
    assert body["type"] == "Warning"
    assert body["source"] == {"component": "csi-wasm", "host": NODE}
    assert body["reportingComponent"] == "wasm.csi.dev/csi-wasm"
    assert body["reportingInstance"] == NODE
    assert body["count"] == 1
    assert parse_time(body["firstTimestamp"]) == START
    assert parse_time(body["lastTimestamp"]) == START
    assert server.event("shop", body["metadata"]["name"]) is not None


def test_a_bad_catalog_entry_is_a_warning_event_on_the_configmap(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    message = "catalog entry '../x' (oci://r.io/x:v1) skipped: name '../x' is not a DNS label"
    recorder.object_warning(
        "ConfigMap", "shop", "csi-wasm-prefetch", "InvalidCatalogEntry", message
    )
    recorder.close()

    [request] = server.requests
    assert (request.method, request.path, request.status) == ("POST", EVENTS_PATH, 201)
    body = request.body
    assert isinstance(body, dict)
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "csi-wasm-prefetch",
        "namespace": "shop",
    }
    assert (body["type"], body["reason"], body["message"]) == (
        "Warning",
        "InvalidCatalogEntry",
        message,
    )


def test_a_pull_is_a_normal_event_with_reference_digest_size_and_time(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    recorder.pulled(POD, "ghcr.io/acme/f:v1", DIGEST, 24_678, 1.23, cached=False)
    recorder.pulled(POD, "ghcr.io/acme/f:v1", f"sha256:{DIGEST}", 24_678, 0.0, cached=True)
    recorder.close()

    first, second = (request.body for request in server.requests)
    assert (first["type"], first["reason"]) == ("Normal", "Pulled")
    assert first["message"] == (
        "Wasm module ghcr.io/acme/f:v1 (sha256:0123456789ab\u2026, 24.1 KiB) pulled in 1.2s"
    )
    assert (second["type"], second["reason"]) == ("Normal", REASON_PULLED)
    assert second["message"] == (
        "Wasm module ghcr.io/acme/f:v1 (sha256:0123456789ab\u2026, 24.1 KiB) already on node"
    )


@pytest.mark.parametrize(
    ("size", "seconds", "expected"),
    [
        (512, 0.045, "(sha256:0123456789ab\u2026, 512 B) pulled in 45ms"),
        (3 * 1024 * 1024 + 1, 12.34, "(sha256:0123456789ab\u2026, 3.0 MiB) pulled in 12.3s"),
        (5 * 1024**3, 125.0, "(sha256:0123456789ab\u2026, 5.0 GiB) pulled in 2m05s"),
    ],
)
def test_pulled_message_formats(size: int, seconds: float, expected: str) -> None:
    assert (
        pulled_message("r:v1", DIGEST, size, seconds, cached=False)
        == f"Wasm module r:v1 {expected}"
    )


def test_the_component_and_driver_name_are_configurable(
    server: FakeApiServer, make_recorder: Factory
) -> None:
    recorder = make_recorder(component="wasm-node", driver_name="wasm.example.com")
    recorder.failed(POD, REASON_INVALID_MODULE, "not a Wasm module")
    recorder.close()

    [request] = server.requests
    assert request.body["source"] == {"component": "wasm-node", "host": NODE}
    assert request.body["reportingComponent"] == "wasm.example.com/wasm-node"


@pytest.mark.parametrize(
    ("message", "expected_prefix"),
    [("x" * 5000, "x" * 1021), ("\u00e9" * 1000, "\u00e9" * 510)],
)
def test_long_messages_are_cut_to_the_api_limit(
    server: FakeApiServer, recorder: KubernetesEventRecorder, message: str, expected_prefix: str
) -> None:
    recorder.failed(POD, REASON_FAILED_PULL, message)
    recorder.close()

    sent = message_of(server.requests[0])
    assert len(sent.encode()) <= 1024
    assert sent == expected_prefix + "..."


def test_a_volume_without_pod_info_gets_no_event(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    recorder.failed(PodInfo("", "", ""), REASON_FAILED_PULL, MESSAGE)
    recorder.pulled(PodInfo("shop", "", ""), "r:v1", DIGEST, 1, 1.0, cached=False)
    recorder.pulled(PodInfo("", "web-0", "uid"), "r:v1", DIGEST, 1, 1.0, cached=False)
    recorder.failed(POD, REASON_FAILED_PULL, "the only one")
    recorder.close()

    assert [message_of(request) for request in server.requests] == ["the only one"]


# --- aggregation ----------------------------------------------------------------------


def test_repeats_patch_the_count_instead_of_creating_events(
    server: FakeApiServer, recorder: KubernetesEventRecorder, clock: FakeClock
) -> None:
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    clock.now += 5
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    clock.now += 20
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.close()

    post, patch2, patch3 = server.requests
    assert (post.method, post.path) == ("POST", EVENTS_PATH)
    name = post.body["metadata"]["name"]
    for patch, count, seconds in ((patch2, 2, 5), (patch3, 3, 25)):
        assert (patch.method, patch.path, patch.status) == (
            "PATCH",
            f"{EVENTS_PATH}/{name}",
            200,
        )
        assert patch.content_type == "application/strategic-merge-patch+json"
        assert patch.headers["authorization"] == f"Bearer {TOKEN}"
        assert patch.body["count"] == count
        assert parse_time(patch.body["lastTimestamp"]).timestamp() == START.timestamp() + seconds
    stored = server.event("shop", name)
    assert stored is not None
    assert stored["count"] == 3
    assert parse_time(stored["firstTimestamp"]) == START


@pytest.mark.parametrize(
    ("pod", "reason", "message"),
    [
        (POD, REASON_FAILED_PULL, MESSAGE + " (different)"),
        (POD, REASON_INVALID_MODULE, MESSAGE),
        (PodInfo("shop", "web-1", "another-uid"), REASON_FAILED_PULL, MESSAGE),
    ],
)
def test_a_different_pod_reason_or_message_is_a_new_event(
    server: FakeApiServer,
    recorder: KubernetesEventRecorder,
    pod: PodInfo,
    reason: str,
    message: str,
) -> None:
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.failed(pod, reason, message)
    recorder.close()

    assert [request.method for request in server.requests] == ["POST", "POST"]
    assert [request.body["count"] for request in server.requests] == [1, 1]


def test_a_repeat_after_the_window_is_a_new_event(
    server: FakeApiServer, make_recorder: Factory, clock: FakeClock
) -> None:
    recorder = make_recorder(aggregate_window=600.0)
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    clock.now += 600  # within the window: patched
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    clock.now += 601  # the window counts from the last repeat
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.close()

    assert [request.method for request in server.requests] == ["POST", "PATCH", "POST"]
    first, _, second = server.requests
    assert first.body["metadata"]["name"] != second.body["metadata"]["name"]
    assert second.body["count"] == 1
    assert parse_time(second.body["firstTimestamp"]).timestamp() == clock.now


def test_an_expired_event_is_created_again(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    [post] = server.wait_for_requests(1)
    server.forget("shop", post.body["metadata"]["name"])  # its TTL ran out

    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.close()

    _, patch, repost, patch_new = server.requests
    assert (patch.method, patch.status) == ("PATCH", 404)
    assert (repost.method, repost.status, repost.body["count"]) == ("POST", 201, 1)
    new_name = repost.body["metadata"]["name"]
    assert (patch_new.method, patch_new.path) == ("PATCH", f"{EVENTS_PATH}/{new_name}")
    assert patch_new.body["count"] == 2


def test_a_failed_patch_does_not_lose_the_count(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    server.wait_for_requests(1)
    server.fail_next(500)
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.close()

    assert [(r.method, r.status) for r in server.requests] == [
        ("POST", 201),
        ("PATCH", 500),
        ("PATCH", 200),
    ]
    assert server.requests[2].body["count"] == 3


class MemoryEventsApi:
    """An in-memory EventsApi: what the recorder asked for, without HTTP."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Mapping[str, object]]] = []
        self.created = 0
        self.fail_with: BaseException | None = None

    def create_event(self, namespace: str, event: Mapping[str, object]) -> str:
        self._maybe_fail()
        self.created += 1
        name = f"event-{self.created}"
        self.calls.append(("create", name, event))
        return name

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, object]) -> None:
        self._maybe_fail()
        self.calls.append(("patch", name, patch))

    def _maybe_fail(self) -> None:
        error, self.fail_with = self.fail_with, None
        if error is not None:
            raise error


def test_the_aggregation_memory_is_bounded(make_recorder: Factory) -> None:
    api = MemoryEventsApi()
    recorder = make_recorder(api, cache_size=2)
    for message in ("a", "b", "c", "a", "c"):
        recorder.failed(POD, REASON_FAILED_PULL, message)
    recorder.close()

    # "a" was the least recently used when "c" came: forgotten, so created again.
    assert [(verb, name) for verb, name, _ in api.calls] == [
        ("create", "event-1"),
        ("create", "event-2"),
        ("create", "event-3"),
        ("create", "event-4"),
        ("patch", "event-3"),
    ]


# --- never in the caller's way --------------------------------------------------------


def test_calls_return_while_the_api_server_is_stalled(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    server.stall()
    recorder.failed(POD, REASON_FAILED_PULL, "first")
    server.wait_for(lambda: server.held == 1)

    started = time.monotonic()
    for i in range(100):
        recorder.failed(POD, REASON_FAILED_PULL, f"message {i}")
    elapsed = time.monotonic() - started

    # Returned while the server still holds the first request, nothing answered yet.
    assert server.held == 1
    assert server.requests == []
    assert elapsed < 1.0  # generous: this checks "does not block", not speed
    assert recorder.dropped == 0

    server.release()
    server.wait_for_requests(101)


def test_a_full_queue_drops_new_events_and_counts_them(
    server: FakeApiServer,
    make_recorder: Factory,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="csi_wasm.kube.events")
    recorder = make_recorder(queue_size=3)
    server.stall()
    recorder.failed(POD, REASON_FAILED_PULL, "in flight")
    server.wait_for(lambda: server.held == 1)
    for i in range(3):
        recorder.failed(POD, REASON_FAILED_PULL, f"queued {i}")
    for i in range(5):
        recorder.failed(POD, REASON_FAILED_PULL, f"dropped {i}")
    assert recorder.dropped == 5

    def drop_logs() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "queue is full" in r.getMessage()]

    assert len(drop_logs()) == 1  # at most once a minute
    assert drop_logs()[0].levelno == logging.DEBUG
    clock.now += 61
    recorder.failed(POD, REASON_FAILED_PULL, "dropped later")
    assert recorder.dropped == 6
    assert len(drop_logs()) == 2

    server.release()
    recorder.close(timeout=10)
    assert [message_of(r) for r in server.requests] == [
        "in flight",
        "queued 0",
        "queued 1",
        "queued 2",
    ]


def test_close_sends_what_is_queued(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    server.stall()
    for i in range(5):
        recorder.failed(POD, REASON_FAILED_PULL, f"message {i}")
    server.wait_for(lambda: server.held == 1)
    server.release()
    recorder.close(timeout=10)

    assert len(server.requests) == 5  # no waiting: close returned after the last one


def test_close_gives_up_after_its_timeout(
    server: FakeApiServer, recorder: KubernetesEventRecorder
) -> None:
    server.stall()
    for i in range(3):
        recorder.failed(POD, REASON_FAILED_PULL, f"message {i}")
    server.wait_for(lambda: server.held == 1)

    started = time.monotonic()
    recorder.close(timeout=0.2)
    assert time.monotonic() - started < 2.0

    recorder.failed(POD, REASON_FAILED_PULL, "after close")  # ignored, no error
    server.release()
    wait_until(lambda: not recorder._worker.is_alive())
    assert [message_of(r) for r in server.requests] == ["message 0"]


def test_callers_on_many_threads(server: FakeApiServer, recorder: KubernetesEventRecorder) -> None:
    def report(thread: int) -> None:
        for i in range(20):
            recorder.failed(POD, REASON_FAILED_PULL, f"thread {thread} message {i}")

    threads = [threading.Thread(target=report, args=(t,)) for t in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close(timeout=10)

    assert len({message_of(r) for r in server.requests}) == 100


# --- errors are logged, never raised, never leak the token ----------------------------


@pytest.mark.parametrize(("status", "hint"), [(403, "create and patch on events"), (500, "500")])
def test_an_api_error_is_logged_with_its_status_and_the_next_event_is_sent(
    server: FakeApiServer,
    recorder: KubernetesEventRecorder,
    caplog: pytest.LogCaptureFixture,
    status: int,
    hint: str,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, the HTTP client's debug lines too
    server.fail_next(status)
    recorder.failed(POD, REASON_FAILED_PULL, "refused")
    recorder.failed(POD, REASON_FAILED_PULL, "accepted")
    recorder.close()

    assert [(r.status, message_of(r)) for r in server.requests] == [
        (status, "refused"),
        (201, "accepted"),
    ]
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.name == "csi_wasm.kube.events"
    assert hint in warning.getMessage()
    assert warning.fields["status"] == status  # type: ignore[attr-defined]
    assert warning.exc_info is None
    text = logged_text(caplog)
    assert TOKEN not in text
    assert SECRET_IN_ERRORS not in text  # neither response headers nor bodies


def test_no_api_server_is_logged_and_survived(
    make_recorder: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeApiServer() as gone:
        url = gone.url  # a port nobody listens on once it is stopped
    recorder = make_recorder(core_v1_api(url, TOKEN), request_timeout=2.0)
    recorder.failed(POD, REASON_FAILED_PULL, "first")
    recorder.failed(POD, REASON_FAILED_PULL, "second")
    recorder.close(timeout=20)

    # urllib3 warns about its own connection retries; ours is one line per failure kind.
    [warning] = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "csi_wasm.kube.events"
    ]
    assert "no answer from the API server" in warning.getMessage()
    assert warning.fields["status"] is None  # type: ignore[attr-defined]
    assert TOKEN not in logged_text(caplog)


def test_an_unexpected_error_in_the_api_does_not_stop_the_worker(
    make_recorder: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    api = MemoryEventsApi()
    api.fail_with = RuntimeError("boom")
    recorder = make_recorder(api)
    recorder.failed(POD, REASON_FAILED_PULL, "lost")
    recorder.failed(POD, REASON_FAILED_PULL, "sent")
    recorder.close()

    assert [(verb, event["message"]) for verb, _, event in api.calls] == [("create", "sent")]
    assert any("unexpected error" in r.getMessage() for r in caplog.records)


def test_an_api_error_from_the_seam_is_status_only(make_recorder: Factory) -> None:
    api = MemoryEventsApi()
    api.fail_with = EventsApiError(409, "ConflictException")
    recorder = make_recorder(api)
    recorder.failed(POD, REASON_FAILED_PULL, "conflict")
    recorder.failed(POD, REASON_FAILED_PULL, "conflict")  # not remembered: created
    recorder.close()
    assert [verb for verb, _, _ in api.calls] == ["create"]


def test_bad_arguments_never_raise(recorder: KubernetesEventRecorder) -> None:
    recorder.pulled(POD, "r:v1", None, "big", "slow", cached=False)  # type: ignore[arg-type]
    recorder.failed(None, REASON_FAILED_PULL, MESSAGE)  # type: ignore[arg-type]
    recorder.failed(POD, None, None)  # type: ignore[arg-type]


def test_the_null_recorder_does_nothing() -> None:
    recorder = NullRecorder()
    recorder.pulled(POD, "r:v1", DIGEST, 1, 1.0, cached=True)
    recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
    recorder.close()


# --- configuration from the environment -----------------------------------------------


def test_outside_a_cluster_there_is_no_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert isinstance(recorder_from_environment(NODE), NullRecorder)


def test_a_broken_in_cluster_config_is_logged_once_and_gives_no_recorder(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken_in_cluster_config(monkeypatch)

    recorder = recorder_from_environment(NODE)

    assert isinstance(recorder, NullRecorder)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "pod events are off" in warnings[0].getMessage()


def test_in_a_cluster_events_go_to_the_api_server_with_the_service_account_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tls = service_account(monkeypatch, tmp_path, TOKEN)
    with FakeApiServer(tls=tls) as server:
        at_api_server(monkeypatch, server.port)

        recorder = recorder_from_environment(NODE, driver_name="wasm.example.com")
        assert isinstance(recorder, KubernetesEventRecorder)
        recorder.failed(POD, REASON_FAILED_PULL, MESSAGE)
        recorder.close(timeout=10)

        [request] = server.requests
    assert (request.method, request.path, request.status) == ("POST", EVENTS_PATH, 201)
    scheme, credential = request.headers["authorization"].split(" ", 1)
    assert (scheme.lower(), credential) == ("bearer", TOKEN)  # the client's loader says "bearer"
    assert request.headers["user-agent"] == f"csi-wasm/{__version__}"
    assert request.body["reportingComponent"] == "wasm.example.com/csi-wasm"


def test_importing_the_module_does_not_load_the_kubernetes_client() -> None:
    # The client is big and only needed in a cluster: recorder_from_environment loads it.
    assert not imports_kubernetes("csi_wasm.kube.events")
