"""Kubernetes Events on the pod: what the driver did with its volume, best effort.

Users read these in ``kubectl describe pod``: which module was pulled (or found on the
node), and why a volume could not be published. Reporting must never get in the way of
publishing, so:

* :meth:`EventRecorder.pulled` and :meth:`EventRecorder.failed` only put the event on a
  bounded in-memory queue and return; one daemon thread sends. When the queue is full the
  new event is dropped and counted (``dropped``). Nothing is ever raised to the caller.
* There are no retries. An API error (403 without RBAC, 500, connection refused) is logged
  with its HTTP status only and the event is forgotten.
* kubelet retries a failing NodePublishVolume every few seconds to minutes. As client-go's
  event recorder does, a repeat of the same event (same pod, type, reason and message)
  within ``aggregate_window`` seconds of the previous one patches the existing Event's
  ``count`` and ``lastTimestamp`` instead of creating another. The memory of recent
  Events is a bounded LRU. If the Event has expired on the server (PATCH answers 404), a
  new one is created.

The Events are core/v1 Events (``POST /api/v1/namespaces/{ns}/events``), the API that
``kubectl describe`` reads, with ``involvedObject`` pointing at the pod named by
kubelet's podInfoOnMount attributes. A volume without pod info gets no Event.

Only :class:`CoreV1EventsApi` touches the (untyped) ``kubernetes`` client; the recorder
sees the two calls it needs through :class:`EventsApi`. The ``kubernetes`` package is
imported only by :func:`recorder_from_environment`, when running in a cluster.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from csi_wasm.attributes import PodInfo
from csi_wasm.kube import client as kube_client
from csi_wasm.settings import DEFAULT_DRIVER_NAME

__all__ = [
    "NORMAL",
    "REASON_FAILED_PULL",
    "REASON_INVALID_CATALOG_ENTRY",
    "REASON_INVALID_MODULE",
    "REASON_PULLED",
    "WARNING",
    "CoreV1EventsApi",
    "EventRecorder",
    "EventsApi",
    "EventsApiError",
    "KubernetesEventRecorder",
    "NullRecorder",
    "pulled_message",
    "recorder_from_environment",
]

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"

REASON_PULLED = "Pulled"
REASON_FAILED_PULL = "FailedPull"
REASON_INVALID_MODULE = "InvalidModule"
REASON_SIGNATURE_FAILED = "SignatureVerificationFailed"  # refused, or served under warn
REASON_INVALID_CATALOG_ENTRY = "InvalidCatalogEntry"

DEFAULT_COMPONENT = "csi-wasm"
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_AGGREGATE_WINDOW = 600.0
DEFAULT_CACHE_SIZE = 4096
DEFAULT_REQUEST_TIMEOUT = 10.0

# The API server's limits (pkg/apis/core/validation/events.go), in bytes.
MESSAGE_LIMIT = 1024
REASON_LIMIT = 128
REPORTING_INSTANCE_LIMIT = 128
_NAME_LIMIT = 253  # a DNS subdomain
_LOG_INTERVAL = 60.0  # at most one drop (or repeated error) log line per minute
_TRUNCATED = "..."


class EventRecorder(Protocol):
    """Where the driver reports what it did on a pod. Never raises, never blocks."""

    def pulled(
        self, pod: PodInfo, reference: str, digest: str, size: int, seconds: float, cached: bool
    ) -> None:
        """Normal ``Pulled``: the module is in the node's cache (pulled now, or already)."""

    def failed(self, pod: PodInfo, reason: str, message: str) -> None:
        """Warning ``reason`` (``FailedPull``, ``InvalidModule``): the RPC's error message."""

    def close(self, timeout: float = 2.0) -> None:
        """Send what can be sent within ``timeout`` seconds, then stop."""


class NullRecorder:
    """Reports nothing: outside a cluster, or in tests."""

    def pulled(
        self, pod: PodInfo, reference: str, digest: str, size: int, seconds: float, cached: bool
    ) -> None:
        return

    def failed(self, pod: PodInfo, reason: str, message: str) -> None:
        return

    def close(self, timeout: float = 2.0) -> None:
        return


# --- messages -------------------------------------------------------------------------


def pulled_message(reference: str, digest: str, size: int, seconds: float, cached: bool) -> str:
    """E.g. ``Wasm module ghcr.io/acme/f:v1 (sha256:0123456789ab…, 24.1 KiB) pulled in 1.2s``."""
    short = digest.removeprefix("sha256:")[:12]
    what = f"Wasm module {reference} (sha256:{short}\u2026, {_format_size(size)})"
    if cached:
        return f"{what} already on node"
    return f"{what} pulled in {_format_seconds(seconds)}"


def _format_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _truncate(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, cut on a character boundary, marked with '...'."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    cut = encoded[: limit - len(_TRUNCATED)].decode(errors="ignore")
    return cut + _TRUNCATED


def _rfc3339(timestamp: float) -> str:
    """Whole seconds in UTC, as metav1.Time serialises: ``2026-01-02T03:04:05Z``."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_name(pod_name: str) -> str:
    suffix = secrets.token_hex(8)
    prefix = pod_name[: _NAME_LIMIT - len(suffix) - 1].rstrip(".-")
    return f"{prefix}.{suffix}"


# --- the API seam ---------------------------------------------------------------------


class EventsApiError(Exception):
    """An Events API call failed. ``status`` is the HTTP status, None without a response.

    Carries nothing else from the response or the request: what reaches the log is
    the status and the kind of failure, never headers (the bearer token) or bodies.
    """

    def __init__(self, status: int | None, kind: str) -> None:
        super().__init__(f"HTTP {status}" if status is not None else kind)
        self.status = status
        self.kind = kind


@runtime_checkable
class EventsApi(Protocol):
    """The two calls the recorder makes; raise :class:`EventsApiError` on failure."""

    def create_event(self, namespace: str, event: Mapping[str, object]) -> str:
        """POST the Event; return its name as the server stored it."""

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, object]) -> None:
        """Strategic-merge PATCH the named Event."""


class CoreV1EventsApi:
    """:class:`EventsApi` on a ``kubernetes.client.CoreV1Api``.

    Responses are read raw (``_preload_content=False``), so neither a server that
    answers with fields this client version does not know nor the client's own model
    validation can turn a sent Event into an error.
    """

    def __init__(self, core_v1: Any, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self._core_v1 = core_v1
        self._timeout = request_timeout

    def create_event(self, namespace: str, event: Mapping[str, object]) -> str:
        sent = event.get("metadata")
        fallback = sent.get("name", "") if isinstance(sent, Mapping) else ""
        data = _call(
            lambda: self._core_v1.create_namespaced_event(
                namespace,
                dict(event),
                # This client version sends no Content-Type for a POST unless told.
                _headers={"Content-Type": "application/json"},
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )
        return _created_name(data) or str(fallback)

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, object]) -> None:
        _call(
            lambda: self._core_v1.patch_namespaced_event(
                name,
                namespace,
                dict(patch),
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )


def _call(request: Callable[[], Any]) -> bytes:
    """Run one client call; the response body, or :class:`EventsApiError`."""
    try:
        response = request()
        try:
            return bytes(response.data)
        finally:
            response.release_conn()
    except Exception as error:
        status = getattr(error, "status", None)
        # Chaining would carry the client's exception (response headers and body) along.
        raise EventsApiError(
            status if isinstance(status, int) else None, type(error).__name__
        ) from None


def _created_name(data: bytes) -> str:
    try:
        created = json.loads(data)
    except ValueError:
        return ""
    metadata = created.get("metadata") if isinstance(created, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else ""


# --- the recorder ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Occurrence:
    """One thing that happened to a pod (or another object), waiting to be sent."""

    pod: PodInfo  # the involved object: a pod unless ``kind`` says otherwise
    type: str
    reason: str
    message: str
    time: float
    kind: str = "Pod"

    @property
    def key(self) -> tuple[str, str, str, str, str, str, str]:
        return (
            self.kind,
            self.pod.namespace,
            self.pod.name,
            self.pod.uid,
            self.type,
            self.reason,
            self.message,
        )


@dataclass
class _Recent:
    """An Event on the server that a repeat of the same occurrence patches."""

    namespace: str
    name: str
    count: int
    last_seen: float


class _Throttle:
    """True at most once per ``interval`` seconds (and whenever ``topic`` changes)."""

    def __init__(self, clock: Callable[[], float], interval: float = _LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self._topic: object = None

    def allow(self, topic: object = None) -> bool:
        now = self._clock()
        if self._last is not None and topic == self._topic and now - self._last < self._interval:
            return False
        self._last, self._topic = now, topic
        return True


class KubernetesEventRecorder:
    """Sends Events to the API server from one background thread.

    ``api`` is a ``kubernetes.client.CoreV1Api`` or any :class:`EventsApi`.
    """

    def __init__(
        self,
        api: object,
        *,
        node_name: str,
        component: str = DEFAULT_COMPONENT,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        aggregate_window: float = DEFAULT_AGGREGATE_WINDOW,
        clock: Callable[[], float] = time.time,
        driver_name: str = DEFAULT_DRIVER_NAME,
        cache_size: int = DEFAULT_CACHE_SIZE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if queue_size < 1 or cache_size < 1:
            raise ValueError("queue_size and cache_size must be at least 1")
        self._api: EventsApi = (
            api
            if isinstance(api, EventsApi)
            else CoreV1EventsApi(api, request_timeout=request_timeout)
        )
        self._node_name = node_name
        self._component = component
        # reportingComponent must be a qualified name, e.g. wasm.csi.dev/csi-wasm.
        self._reporting_component = f"{driver_name}/{component}"
        self._queue_size = queue_size
        self._window = aggregate_window
        self._clock = clock
        self._cache_size = cache_size

        self.dropped = 0
        """Events not sent because the queue was full."""

        self._pending: deque[_Occurrence] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._abandoned = False
        self._drop_log = _Throttle(clock)
        self._error_log = _Throttle(clock)  # used by the worker only
        self._recent: OrderedDict[tuple[str, ...], _Recent] = OrderedDict()  # worker only
        self._worker = threading.Thread(target=self._run, name="csi-wasm-events", daemon=True)
        self._worker.start()

    # The caller's side: queue and return.

    def pulled(
        self, pod: PodInfo, reference: str, digest: str, size: int, seconds: float, cached: bool
    ) -> None:
        try:
            message = pulled_message(reference, digest, size, seconds, cached)
            self._enqueue(pod, NORMAL, REASON_PULLED, message)
        except Exception:
            log.debug("could not queue a Pulled event", exc_info=True)

    def failed(self, pod: PodInfo, reason: str, message: str) -> None:
        try:
            self._enqueue(pod, WARNING, reason, message)
        except Exception:
            log.debug("could not queue a %s event", reason, exc_info=True)

    def object_warning(
        self, kind: str, namespace: str, name: str, reason: str, message: str
    ) -> None:
        """A Warning Event on another core/v1 object, e.g. the prefetch list's ConfigMap."""
        try:
            self._enqueue(PodInfo(namespace, name, ""), WARNING, reason, message, kind)
        except Exception:
            log.debug("could not queue a %s event", reason, exc_info=True)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued within ``timeout`` seconds; give up on the rest."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join(max(timeout, 0.0))
        if not self._worker.is_alive():
            return
        with self._changed:
            unsent = len(self._pending)
            self._pending.clear()
            self._abandoned = True
        log.info(
            "stopped reporting pod events with some unsent",
            extra={"fields": {"unsent": unsent, "timeout_seconds": timeout}},
        )

    def _enqueue(
        self, pod: PodInfo, type_: str, reason: str, message: str, kind: str = "Pod"
    ) -> None:
        if not (pod.name and pod.namespace):
            return  # podInfoOnMount is off: no pod to attach the Event to
        occurrence = _Occurrence(
            pod=pod,
            type=type_,
            reason=_truncate(reason, REASON_LIMIT),
            message=_truncate(message, MESSAGE_LIMIT),
            time=self._clock(),
            kind=kind,
        )
        with self._changed:
            if self._closed:
                return
            if len(self._pending) < self._queue_size:
                self._pending.append(occurrence)
                self._changed.notify()
                return
            self.dropped += 1
            dropped = self.dropped
            report = self._drop_log.allow()
        if report:
            log.debug(
                "pod event queue is full; dropping events",
                extra={"fields": {"dropped_total": dropped, "queue_size": self._queue_size}},
            )

    # The worker's side: send, one at a time.

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._abandoned or not self._pending:
                    return
                occurrence = self._pending.popleft()
            try:
                self._send(occurrence)
            except Exception:
                # A bug (or a custom EventsApi raising something else): keep going.
                log.warning(
                    "unexpected error reporting a pod event",
                    exc_info=True,
                    extra={"fields": {"reason": occurrence.reason, "pod": str(occurrence.pod)}},
                )

    def _send(self, occurrence: _Occurrence) -> None:
        key = occurrence.key
        recent = self._recent.get(key)
        if recent is not None and occurrence.time - recent.last_seen <= self._window:
            recent.count += 1
            recent.last_seen = occurrence.time
            self._recent.move_to_end(key)
            patch = {"count": recent.count, "lastTimestamp": _rfc3339(occurrence.time)}
            try:
                self._api.patch_event(recent.namespace, recent.name, patch)
            except EventsApiError as error:
                if error.status != 404:
                    self._failed_to_send("update", occurrence, error)
                    return
                # Expired on the server (events have a TTL): start a new one.
            else:
                return
        try:
            name = self._api.create_event(occurrence.pod.namespace, self._event(occurrence))
        except EventsApiError as error:
            self._recent.pop(key, None)
            self._failed_to_send("create", occurrence, error)
            return
        self._recent[key] = _Recent(occurrence.pod.namespace, name, 1, occurrence.time)
        self._recent.move_to_end(key)
        while len(self._recent) > self._cache_size:
            self._recent.popitem(last=False)

    def _event(self, occurrence: _Occurrence) -> dict[str, object]:
        pod = occurrence.pod
        involved = {
            "apiVersion": "v1",
            "kind": occurrence.kind,
            "name": pod.name,
            "namespace": pod.namespace,
        }
        if pod.uid:
            involved["uid"] = pod.uid
        timestamp = _rfc3339(occurrence.time)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": _event_name(pod.name), "namespace": pod.namespace},
            "involvedObject": involved,
            "reason": occurrence.reason,
            "message": occurrence.message,
            "type": occurrence.type,
            "source": {"component": self._component, "host": self._node_name},
            "reportingComponent": self._reporting_component,
            "reportingInstance": self._node_name[:REPORTING_INSTANCE_LIMIT],
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }

    def _failed_to_send(self, action: str, occurrence: _Occurrence, error: EventsApiError) -> None:
        fields = {
            "status": error.status,
            "error": error.kind,
            "reason": occurrence.reason,
            "pod": str(occurrence.pod),
        }
        if error.status in (401, 403):
            message = (
                f"cannot {action} pod events: the API server refused "
                "(grant the driver's ServiceAccount create and patch on events)"
            )
        elif error.status is None:
            message = f"cannot {action} pod events: no answer from the API server"
        else:
            message = f"cannot {action} pod events: the API server answered {error.status}"
        level = logging.WARNING if self._error_log.allow(error.status) else logging.DEBUG
        log.log(level, message, extra={"fields": fields})


# --- wiring ---------------------------------------------------------------------------


def recorder_from_environment(
    node_name: str, *, driver_name: str = DEFAULT_DRIVER_NAME, kubeconfig: Path | None = None
) -> EventRecorder:
    """A recorder on the API (``kubeconfig``, else in-cluster), or a :class:`NullRecorder`."""
    if not kube_client.reachable(kubeconfig):
        log.info("not running in a cluster (no KUBERNETES_SERVICE_HOST): pod events are off")
        return NullRecorder()
    core_v1 = kube_client.core_v1_or_warn(kubeconfig, log, "pod events are off")
    if core_v1 is None:
        return NullRecorder()
    api = CoreV1EventsApi(core_v1)
    return KubernetesEventRecorder(api, node_name=node_name, driver_name=driver_name)
