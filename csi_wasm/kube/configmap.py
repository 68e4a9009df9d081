"""Follow the prefetch ConfigMap: list by name, then watch, as client-go's reflector does.

:class:`ConfigMapWatcher` follows one ConfigMap: LIST (with
``fieldSelector=metadata.name=NAME``: the chart's Role grants list/watch on that one
name only) for the object and a resourceVersion, then WATCH from there with bookmarks.
``410 Gone`` or a dropped stream means LIST again; other errors are retried with
backoff. It never raises into the caller and logs each distinct problem once.

Only :class:`CoreV1ConfigMapApi` touches the (untyped) ``kubernetes`` client; the
watcher sees the two calls it needs through :class:`ConfigMapApi`. The client is
imported by :func:`watcher_from_environment` only, when running in a cluster.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from csi_wasm.backoff import backoff_delay
from csi_wasm.kube import client as kube_client
from csi_wasm.prefetch.entries import DEFAULT_KEY, PrefetchEntry, parse_prefetch_list

log = logging.getLogger(__name__)

DEFAULT_WATCH_SECONDS = 300  # the API server ends each watch after this; we start another
DEFAULT_REQUEST_TIMEOUT = 10.0
_PROBLEMS_REMEMBERED = 32

# --- the API seam ---------------------------------------------------------------------


class ConfigMapApiError(Exception):
    """A ConfigMap API call failed. ``status`` is the HTTP status, None without one.

    As :class:`csi_wasm.kube.events.EventsApiError`: only the status and the kind of
    failure, never response headers or bodies.
    """

    def __init__(self, status: int | None, kind: str) -> None:
        super().__init__(f"HTTP {status}" if status is not None else kind)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class ConfigMapList:
    """What a LIST by name found: the object (None if absent) and the list's version."""

    object: Mapping[str, Any] | None
    resource_version: str


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resource_version(self) -> str | None:
        metadata = self.object.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        return version if isinstance(version, str) and version else None


class WatchStream(Protocol):
    """Events of one watch request. Iterating ends when the server ends the watch and
    raises :class:`ConfigMapApiError` when the stream breaks. :meth:`close` may be
    called from another thread to interrupt a blocked read."""

    def __iter__(self) -> Iterator[WatchEvent]: ...

    def close(self) -> None: ...


class ConfigMapApi(Protocol):
    """The two calls the watcher makes; raise :class:`ConfigMapApiError` on failure."""

    def list_configmap(self, namespace: str, name: str) -> ConfigMapList: ...

    def watch_configmap(
        self, namespace: str, name: str, resource_version: str, timeout_seconds: int
    ) -> WatchStream: ...


class CoreV1ConfigMapApi:
    """:class:`ConfigMapApi` on a ``kubernetes.client.CoreV1Api``, reading raw responses.

    Both calls are ``list_namespaced_config_map`` with the field selector
    ``metadata.name=NAME``: the only form of list and watch that RBAC's
    ``resourceNames`` allows.
    """

    def __init__(self, core_v1: Any, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self._core_v1 = core_v1
        self._timeout = request_timeout

    def list_configmap(self, namespace: str, name: str) -> ConfigMapList:
        response = _request(
            lambda: self._core_v1.list_namespaced_config_map(
                namespace,
                field_selector=f"metadata.name={name}",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )
        try:
            data = bytes(response.data)
        except Exception as error:
            raise ConfigMapApiError(None, type(error).__name__) from None
        finally:
            response.release_conn()
        return _config_map_list(data, name)

    def watch_configmap(
        self, namespace: str, name: str, resource_version: str, timeout_seconds: int
    ) -> WatchStream:
        response = _request(
            lambda: self._core_v1.list_namespaced_config_map(
                namespace,
                field_selector=f"metadata.name={name}",
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                # The server ends the watch after timeout_seconds; a longer silence
                # means a dead connection.
                _request_timeout=(self._timeout, float(timeout_seconds) + 30.0),
            )
        )
        return _ResponseStream(response)


def _request(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as error:
        status = getattr(error, "status", None)
        # Chaining would carry the client's exception (headers and body) along.
        raise ConfigMapApiError(
            status if isinstance(status, int) else None, type(error).__name__
        ) from None


def _config_map_list(data: bytes, name: str) -> ConfigMapList:
    try:
        listed = json.loads(data)
    except ValueError:
        raise ConfigMapApiError(None, "malformed list response") from None
    metadata = listed.get("metadata") if isinstance(listed, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    items = listed.get("items") if isinstance(listed, dict) else None
    if not isinstance(version, str) or not isinstance(items, list | None):
        raise ConfigMapApiError(None, "malformed list response")
    found = None
    for item in items or []:
        item_metadata = item.get("metadata") if isinstance(item, dict) else None
        if isinstance(item_metadata, dict) and item_metadata.get("name") == name:
            found = item
    return ConfigMapList(found, version)


class _ResponseStream:
    """Newline-delimited watch events from a urllib3 response (chunked, as the API
    server sends them)."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __iter__(self) -> Iterator[WatchEvent]:
        pending = b""
        try:
            for chunk in self._response.stream(65536, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _watch_event(line)
        except ConfigMapApiError:
            raise
        except Exception as error:
            raise ConfigMapApiError(None, f"watch stream broken ({type(error).__name__})") from None
        finally:
            self._response.close()

    def close(self) -> None:
        # shutdown() wakes a read blocked in another thread; close() alone may not.
        shutdown = getattr(self._response, "shutdown", None)
        try:
            if callable(shutdown):
                shutdown()
            else:
                self._response.close()
        except Exception as error:
            log.debug("closing the watch failed", extra={"fields": {"error": repr(error)}})


def _watch_event(line: bytes) -> WatchEvent:
    try:
        decoded = json.loads(line)
    except ValueError:
        raise ConfigMapApiError(None, "malformed watch event") from None
    kind = decoded.get("type") if isinstance(decoded, dict) else None
    obj = decoded.get("object") if isinstance(decoded, dict) else None
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise ConfigMapApiError(None, "malformed watch event")
    return WatchEvent(kind, obj)


# --- the watcher ----------------------------------------------------------------------


class _Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class _Broken(Exception):
    """The watch failed: list again (after a backoff unless it had been healthy)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_NO_STATE = object()


class ConfigMapWatcher:
    """Follows one ConfigMap and hands its prefetch list to ``on_change``.

    ``on_change`` gets the valid entries of ``data[key]`` on the first successful LIST
    and again whenever that text changes; an absent (or deleted) ConfigMap or key
    means an empty list. API errors keep the last list. ``on_change`` runs on the
    watcher's thread.

    ``wait(seconds)`` is the pause between failing attempts (it returns early when the
    watcher stops unless a test replaces it) and ``clock`` tells a watch that lasted
    from one that ended at once (``min_healthy`` seconds); both are test seams.
    """

    def __init__(
        self,
        api: ConfigMapApi,
        namespace: str,
        name: str,
        on_change: Callable[[Sequence[PrefetchEntry]], None],
        key: str = DEFAULT_KEY,
        *,
        watch_seconds: int = DEFAULT_WATCH_SECONDS,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        min_healthy: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._name = name
        self._on_change = on_change
        self._key = key
        self._watch_seconds = watch_seconds
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._min_healthy = min_healthy
        self._clock = clock
        self._stopping = threading.Event()
        self._wait = wait if wait is not None else self._stopping.wait
        self._jitter = jitter
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self._applied: object = _NO_STATE
        self._problems: OrderedDict[str, None] = OrderedDict()
        self._failures = 0
        self._gone_in_a_row = 0

    @property
    def where(self) -> str:
        return f"{self._namespace}/{self._name}"

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"watch configmap {self.where}", daemon=True
            )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            stream, thread = self._stream, self._thread
        if stream is not None:
            stream.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # The loop.

    def _run(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            if self._failures:
                delay = backoff_delay(
                    self._failures, self._backoff_initial, self._backoff_max, self._jitter()
                )
                log.debug("configmap watch backing off", extra={"fields": {"delay_s": delay}})
                self._wait(delay)
                if self._stopping.is_set():
                    return
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except _Gone:
                version = None
                self._gone_in_a_row += 1
                if self._gone_in_a_row > 1:  # a fresh version should not be gone
                    self._failures += 1
            except _Broken as broken:
                version = None
                self._failures += 1
                self._problem(str(broken), broken.status)
            except Exception:  # a bug: keep following the list, but say so
                version = None
                self._failures += 1
                log.exception("configmap watch failed unexpectedly")

    def _list(self) -> str:
        try:
            listed = self._api.list_configmap(self._namespace, self._name)
        except ConfigMapApiError as error:
            if error.status == 410:
                raise _Gone from None
            raise _Broken(self._explain("list", error), error.status) from None
        self._apply(listed.object)
        return listed.resource_version

    def _watch(self, version: str) -> str:
        """Watch from ``version``; the version to watch from next (the stream ended)."""
        started = self._clock()
        try:
            stream = self._api.watch_configmap(
                self._namespace, self._name, version, self._watch_seconds
            )
        except ConfigMapApiError as error:
            if error.status == 410:
                raise _Gone from None
            raise _Broken(self._explain("watch", error), error.status) from None
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():
            stream.close()
        try:
            version, delivered = self._follow(stream, version, started)
        finally:
            with self._lock:
                self._stream = None
        if self._stopping.is_set():
            return version
        if not delivered and self._clock() - started < self._min_healthy:
            raise _Broken(f"the watch of ConfigMap {self.where} ended at once")
        self._healthy()
        return version

    def _follow(self, stream: WatchStream, version: str, started: float) -> tuple[str, bool]:
        """Apply the stream's events; the last version seen and whether any came."""
        delivered = False
        try:
            for event in stream:
                if self._stopping.is_set():
                    break
                if not delivered and event.type != "ERROR":
                    delivered = True
                    self._healthy()
                version = self._handle(event, version)
        except ConfigMapApiError as error:
            if self._stopping.is_set():
                return version, delivered
            if not delivered and self._clock() - started < self._min_healthy:
                raise _Broken(self._explain("watch", error)) from None
            self._healthy()
            log.info(
                "configmap watch dropped; listing again",
                extra={"fields": {"configmap": self.where, "error": str(error)}},
            )
            raise _Gone from None  # list again at once, as after a 410
        return version, delivered

    def _handle(self, event: WatchEvent, version: str) -> str:
        if event.type == "ERROR":
            code = event.object.get("code")
            if code == 410:
                log.info(
                    "configmap watch expired (410); listing again",
                    extra={"fields": {"configmap": self.where}},
                )
                raise _Gone
            reason = event.object.get("reason")
            raise _Broken(
                f"the watch of ConfigMap {self.where} returned an error "
                f"(code {code}, reason {str(reason)[:60]})",
                code if isinstance(code, int) else None,
            )
        if event.type in ("ADDED", "MODIFIED"):
            self._apply(event.object)
        elif event.type == "DELETED":
            self._apply(None)
        elif event.type != "BOOKMARK":
            log.debug("unknown watch event type", extra={"fields": {"type": event.type[:40]}})
        return event.resource_version or version

    def _healthy(self) -> None:
        if self._failures or self._problems:
            log.info("following ConfigMap again", extra={"fields": {"configmap": self.where}})
        self._failures = 0
        self._gone_in_a_row = 0
        self._problems.clear()

    # The list inside.

    def _apply(self, obj: Mapping[str, Any] | None) -> None:
        state: tuple[bool, object]
        if obj is None:
            state = (False, None)
        else:
            data = obj.get("data")
            state = (True, data.get(self._key) if isinstance(data, Mapping) else None)
        if state == self._applied:
            return
        self._applied = state
        exists, text = state
        fields: dict[str, object] = {"configmap": self.where, "key": self._key}
        if not exists:
            log.warning(
                f"ConfigMap {self.where} not found: nothing to prefetch from it "
                "(the chart creates it from the value 'prefetch')",
                extra={"fields": fields},
            )
            entries: list[PrefetchEntry] = []
        elif not isinstance(text, str):
            log.warning(
                f"ConfigMap {self.where} has no key {self._key!r}: nothing to prefetch from it",
                extra={"fields": fields},
            )
            entries = []
        else:
            entries, problems = parse_prefetch_list(text)
            for problem in problems:
                log.warning(f"prefetch list problem: {problem}", extra={"fields": fields})
            log.info(
                "prefetch list read",
                extra={"fields": {**fields, "entries": len(entries), "skipped": len(problems)}},
            )
        try:
            self._on_change(entries)
        except Exception:
            log.exception("applying the prefetch list failed", extra={"fields": fields})

    # Problems.

    def _explain(self, action: str, error: ConfigMapApiError) -> str:
        if error.status in (401, 403):
            return (
                f"cannot {action} ConfigMap {self.where}: the API server refused "
                f"(HTTP {error.status}); grant the driver's ServiceAccount get, list and "
                "watch on it (the chart's Role does)"
            )
        if error.status is None:
            return f"cannot {action} ConfigMap {self.where}: {error.kind}"
        return f"cannot {action} ConfigMap {self.where}: the API server answered {error.status}"

    def _problem(self, message: str, status: int | None) -> None:
        fields = {"configmap": self.where, "status": status, "attempt": self._failures}
        if message in self._problems:
            log.debug(message, extra={"fields": fields})
            return
        self._problems[message] = None
        while len(self._problems) > _PROBLEMS_REMEMBERED:
            self._problems.popitem(last=False)
        log.warning(message, extra={"fields": fields})


# --- wiring ---------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def parse_configmap_ref(value: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> (namespace, name); ValueError with a one-line message."""
    namespace, _, name = value.strip().partition("/")
    if (
        not _DNS_LABEL.fullmatch(namespace)
        or len(namespace) > 63
        or not _DNS_SUBDOMAIN.fullmatch(name)
        or len(name) > 253
    ):
        raise ValueError(
            f"--prefetch-configmap {value[:100]!r} must be NAMESPACE/NAME, "
            "e.g. csi-wasm/csi-wasm-prefetch"
        )
    return namespace, name


def watcher_from_environment(
    configmap: str | None,
    on_change: Callable[[Sequence[PrefetchEntry]], None],
    *,
    key: str = DEFAULT_KEY,
    kubeconfig: Path | None = None,
) -> ConfigMapWatcher | None:
    """A watcher for ``NAMESPACE/NAME`` on the API (``kubeconfig``, else in-cluster), not started.

    None when ``configmap`` is None, when there is no API to reach, or when its
    configuration cannot be loaded (logged). ValueError for a malformed ``configmap``.
    """
    if configmap is None:
        return None
    namespace, name = parse_configmap_ref(configmap)
    if not kube_client.reachable(kubeconfig):
        log.info(
            "not running in a cluster (no KUBERNETES_SERVICE_HOST): the prefetch ConfigMap "
            "is not followed (give --kubeconfig to follow it from outside)",
            extra={"fields": {"configmap": configmap}},
        )
        return None
    core_v1 = kube_client.core_v1_or_warn(kubeconfig, log, "the prefetch ConfigMap is not followed")
    if core_v1 is None:
        return None
    return ConfigMapWatcher(CoreV1ConfigMapApi(core_v1), namespace, name, on_change, key)
