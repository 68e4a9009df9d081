"""A fake Kubernetes API server that knows core/v1 Events, for tests of csi_wasm.kube.events.

It listens on 127.0.0.1 (a port the kernel picks), records every request (method, path,
headers, JSON body) and answers the way the API server does:

* ``POST /api/v1/namespaces/{ns}/events``: 201 with the stored object (the body plus
  ``metadata.name`` from ``generateName`` if needed, ``uid``, ``resourceVersion``);
  409 if the name is taken.
* ``PATCH /api/v1/namespaces/{ns}/events/{name}``: 200 with the merged object for a known
  Event, 404 for an unknown one, 415 for a JSON Patch or another content type.
* Failures on demand: :meth:`fail_next` answers the next requests with a ``Status``
  of the given code; :meth:`stall` holds every request until :meth:`release`.

With ``tls=`` (see :func:`self_signed`) it serves HTTPS, as a cluster's API server does.

Error answers carry :data:`SECRET_IN_ERRORS` in their headers and body, so a test can
check that nobody logs response headers or bodies.

Usage::

    with FakeApiServer() as server:
        ...  # point a client at server.url
        server.wait_for(lambda: len(server.requests) == 2)
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

SECRET_IN_ERRORS = "response-detail-3c1d9e"

_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?$")
_MERGE_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json")
_REASONS = {
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    415: "UnsupportedMediaType",
    500: "InternalError",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # with any query string
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON, or None
    status: int  # what the fake answered

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what a strategic merge patch does for plain fields)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM, also the CA a client trusts
    key: Path


def self_signed(directory: Path) -> TlsFiles:
    """A certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to serve HTTPS")
    files = TlsFiles(directory / "apiserver.crt", directory / "apiserver.key")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
        ],
        check=True,
        capture_output=True,
    )
    return files


class FakeApiServer:
    def __init__(self, tls: TlsFiles | None = None) -> None:
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._events: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: deque[int] = deque()
        self._gate = threading.Event()
        self._gate.set()
        self._held = 0
        self._versions = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            def do_PATCH(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def do_PUT(self) -> None:
                fake._handle(self)

            def do_DELETE(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self._scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # Life cycle.

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    # What happened.

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests answered so far, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def held(self) -> int:
        """Requests waiting behind :meth:`stall`."""
        with self._lock:
            return self._held

    def event(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._events.get((namespace, name))
            return copy.deepcopy(stored) if stored is not None else None

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition()`` (re-checked after every request) holds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met within {timeout} s")
                # Also wakes on a timer: conditions may read state other than ours.
                self._lock.wait(min(left, 0.05))

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        self.wait_for(lambda: len(self._requests) >= count, timeout)
        return self.requests

    # Behaviour.

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` (e.g. 403, 500)."""
        with self._lock:
            self._failures.extend([status] * times)

    def stall(self) -> None:
        """Hold every request from now on until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a stored Event, as its TTL would."""
        with self._lock:
            self._events.pop((namespace, name), None)

    # Serving.

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        with self._lock:
            self._held += 1
            self._lock.notify_all()
        try:
            self._gate.wait(timeout=60)
        finally:
            with self._lock:
                self._held -= 1
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            status, answer = self._answer(handler.command, handler.path, headers, body)
            self._requests.append(
                RecordedRequest(handler.command, handler.path, headers, body, status)
            )
            self._lock.notify_all()
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        if status >= 400:
            handler.send_header("X-Detail", SECRET_IN_ERRORS)
        handler.end_headers()
        handler.wfile.write(payload)

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any]]:
        if self._failures:
            return _status(self._failures.popleft(), "injected failure")
        match = _EVENTS.match(path.split("?", 1)[0])
        if match is None:
            return _status(404, f"the server could not find the requested resource {path}")
        namespace, name = match["ns"], match["name"]
        if method == "POST" and name is None:
            return self._create(namespace, body)
        if method == "PATCH" and name is not None:
            return self._patch(namespace, name, headers.get("content-type", ""), body)
        return _status(405, f"{method} is not supported here")

    def _create(self, namespace: str, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return _status(400, "the body is not a JSON object")
        created = copy.deepcopy(body)
        metadata = created.setdefault("metadata", {})
        name = metadata.get("name") or f"{metadata.get('generateName', '')}{next(self._versions):x}"
        if (namespace, name) in self._events:
            return _status(409, f'events "{name}" already exists')
        metadata.update(
            name=name,
            namespace=namespace,
            uid=f"uid-{name}",
            resourceVersion=str(next(self._versions)),
        )
        self._events[(namespace, name)] = created
        return 201, copy.deepcopy(created)

    def _patch(
        self, namespace: str, name: str, content_type: str, body: Any
    ) -> tuple[int, dict[str, Any]]:
        if content_type.split(";", maxsplit=1)[0].strip() not in _MERGE_TYPES:
            return _status(415, f"the body of the request was in an unknown format: {content_type}")
        stored = self._events.get((namespace, name))
        if stored is None:
            return _status(404, f'events "{name}" not found')
        patched = merge_patch(stored, body)
        patched["metadata"]["resourceVersion"] = str(next(self._versions))
        self._events[(namespace, name)] = patched
        return 200, copy.deepcopy(patched)


def _status(code: int, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"{message} ({SECRET_IN_ERRORS})",
        "reason": _REASONS.get(code, "Unknown"),
        "code": code,
    }


# --- ConfigMaps: list and watch by name (for tests of csi_wasm.prefetch) ---------------
#
# Appended: everything above is unchanged. FakeConfigMapApiServer is a FakeApiServer
# that also answers GET /api/v1/namespaces/{ns}/configmaps, list and watch.

import select  # noqa: E402
import socket  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

_CONFIGMAPS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps$")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # what Go's strconv.ParseBool takes


def query_of(request: RecordedRequest) -> dict[str, str]:
    """The query parameters of a recorded request (the last value of each)."""
    return {key: values[-1] for key, values in parse_qs(urlsplit(request.path).query).items()}


@dataclass
class _WatchSession:
    namespace: str
    name: str | None  # from the field selector; None: every ConfigMap in the namespace
    queue: deque[bytes | None]  # JSON lines to send; None ends the stream cleanly
    dropped: bool = False

    def wants(self, namespace: str, name: str) -> bool:
        return self.namespace == namespace and self.name in (None, name)


class FakeConfigMapApiServer(FakeApiServer):
    """A :class:`FakeApiServer` that also serves core/v1 ConfigMaps, list and watch.

    * ``GET /api/v1/namespaces/{ns}/configmaps?fieldSelector=metadata.name%3D{name}``:
      a ``ConfigMapList`` with that ConfigMap (or none) and the current resourceVersion.
      Without that field selector: 403, as RBAC answers a Role that names the object
      in ``resourceNames`` (set ``require_name_selector = False`` to allow it).
    * The same with ``watch=true``: a chunked stream of JSON lines
      ``{"type": ..., "object": ...}``. It starts with every change after the given
      ``resourceVersion`` (an ``ERROR`` with a 410 ``Status`` if that version was
      compacted away, then the end of the stream, as the API server does), then
      follows :meth:`put_configmap` and :meth:`delete_configmap` live.
    * :meth:`send_watch_event` pushes any event (``BOOKMARK``, ``ERROR``) into the open
      watches; :meth:`end_watches` ends them cleanly (as ``timeoutSeconds`` does),
      :meth:`drop_watches` cuts their connections, :meth:`expire_watches` sends them a
      410 and compacts the history.

    Requests are recorded like every other (a watch when it starts, with status 200);
    :meth:`fail_next` applies to them too.
    """

    def __init__(self, tls: TlsFiles | None = None) -> None:
        super().__init__(tls)
        self.require_name_selector = True
        self._configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, str, dict[str, Any]]] = []
        self._resource_version = 100
        self._compacted = 0  # watches from a version below this get 410
        self._sessions: list[_WatchSession] = []
        self._closing = False

    def stop(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        super().stop()

    def __enter__(self) -> FakeConfigMapApiServer:
        self.start()
        return self

    # Objects.

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._resource_version)

    def put_configmap(self, namespace: str, name: str, data: dict[str, str]) -> str:
        """Create or replace a ConfigMap; its new resourceVersion."""
        with self._lock:
            key = (namespace, name)
            kind = "MODIFIED" if key in self._configmaps else "ADDED"
            self._resource_version += 1
            stored = {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": f"uid-{namespace}-{name}",
                    "resourceVersion": str(self._resource_version),
                },
                "data": dict(data),
            }
            self._configmaps[key] = stored
            self._record_change(kind, stored)
            return str(self._resource_version)

    def delete_configmap(self, namespace: str, name: str) -> None:
        with self._lock:
            stored = self._configmaps.pop((namespace, name))
            self._resource_version += 1
            deleted = copy.deepcopy(stored)
            deleted["metadata"]["resourceVersion"] = str(self._resource_version)
            self._record_change("DELETED", deleted)

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._configmaps.get((namespace, name))
            return copy.deepcopy(stored) if stored is not None else None

    # Watches.

    @property
    def open_watches(self) -> int:
        """Watch streams being served now."""
        with self._lock:
            return len(self._sessions)

    def send_watch_event(self, kind: str, obj: dict[str, Any]) -> None:
        """Push ``{"type": kind, "object": obj}`` into every open watch."""
        line = _line(kind, obj)
        with self._lock:
            for session in self._sessions:
                session.queue.append(line)
            self._lock.notify_all()

    def bookmark(self) -> str:
        """A BOOKMARK at the current resourceVersion into every open watch; that version."""
        version = self.resource_version
        self.send_watch_event(
            "BOOKMARK",
            {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": version}},
        )
        return version

    def end_watches(self) -> None:
        """End every open watch cleanly, as the API server does after timeoutSeconds."""
        with self._lock:
            for session in self._sessions:
                session.queue.append(None)
            self._lock.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch's connection mid-stream."""
        with self._lock:
            for session in self._sessions:
                session.dropped = True
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget the history: a watch from any version before the current one gets 410."""
        with self._lock:
            self._compacted = self._resource_version
            self._history.clear()

    def expire_watches(self) -> None:
        """Compact, then send every open watch an ERROR 410 and end it."""
        self.compact()
        with self._lock:
            for session in self._sessions:
                session.queue.append(_line("ERROR", _gone()))
                session.queue.append(None)
            self._lock.notify_all()

    # Serving.

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        match = _CONFIGMAPS.match(handler.path.split("?", 1)[0])
        if handler.command != "GET" or match is None:
            super()._handle(handler)
            return
        query = {k: v[-1] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        headers = {name.lower(): value for name, value in handler.headers.items()}
        namespace = match["ns"]
        selector = query.get("fieldSelector")
        name = None
        if selector is not None:
            field_name, _, value = selector.partition("=")
            if field_name != "metadata.name" or not value:
                self._reply(handler, headers, *_status(400, f"unsupported selector {selector}"))
                return
            name = value.removeprefix("=")
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            self._reply(handler, headers, *_status(failure, "injected failure"))
        elif name is None and self.require_name_selector:
            self._reply(
                handler,
                headers,
                *_status(403, f'configmaps is forbidden: cannot list in namespace "{namespace}"'),
            )
        elif query.get("watch") in _TRUE:
            self._watch(handler, headers, namespace, name, query.get("resourceVersion"))
        else:
            self._reply(handler, headers, 200, self._list(namespace, name))

    def _reply(
        self,
        handler: BaseHTTPRequestHandler,
        headers: dict[str, str],
        status: int,
        answer: dict[str, Any],
    ) -> None:
        with self._lock:
            self._requests.append(RecordedRequest("GET", handler.path, headers, None, status))
            self._lock.notify_all()
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        if status >= 400:
            handler.send_header("X-Detail", SECRET_IN_ERRORS)
        handler.end_headers()
        handler.wfile.write(payload)

    def _list(self, namespace: str, name: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(stored)
                for (ns, stored_name), stored in sorted(self._configmaps.items())
                if ns == namespace and name in (None, stored_name)
            ]
            version = str(self._resource_version)
        return {
            "kind": "ConfigMapList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _watch(
        self,
        handler: BaseHTTPRequestHandler,
        headers: dict[str, str],
        namespace: str,
        name: str | None,
        version_text: str | None,
    ) -> None:
        session = _WatchSession(namespace, name, deque())
        with self._lock:
            version = int(version_text) if version_text and version_text.isdigit() else 0
            if version == 0:  # "any": start with the current objects
                for (ns, stored_name), stored in sorted(self._configmaps.items()):
                    if session.wants(ns, stored_name):
                        session.queue.append(_line("ADDED", stored))
            elif version < self._compacted:
                session.queue.extend([_line("ERROR", _gone()), None])
            else:
                for changed, kind, obj in self._history:
                    meta = obj["metadata"]
                    if changed > version and session.wants(meta["namespace"], meta["name"]):
                        session.queue.append(_line(kind, obj))
            self._sessions.append(session)
            self._requests.append(RecordedRequest("GET", handler.path, headers, None, 200))
            self._lock.notify_all()
        try:
            handler.protocol_version = "HTTP/1.1"
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.send_header("Connection", "close")
            handler.end_headers()
            self._stream(handler, session)
        except OSError:
            pass  # the client went away
        finally:
            handler.close_connection = True
            with self._lock:
                self._sessions.remove(session)
                self._lock.notify_all()

    def _stream(self, handler: BaseHTTPRequestHandler, session: _WatchSession) -> None:
        connection = handler.connection
        while True:
            with self._lock:
                while not (session.queue or session.dropped or self._closing):
                    self._lock.wait(0.05)
                    if select.select([connection], [], [], 0)[0]:
                        return  # the client closed its end (nothing else is sent mid-stream)
                if session.dropped or self._closing:
                    connection.shutdown(socket.SHUT_RDWR)
                    return
                line = session.queue.popleft()
            if line is None:
                handler.wfile.write(b"0\r\n\r\n")
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))

    def _record_change(self, kind: str, obj: dict[str, Any]) -> None:
        """With the lock held: keep the change for later watches and send it to open ones."""
        self._history.append((self._resource_version, kind, copy.deepcopy(obj)))
        line = _line(kind, obj)
        meta = obj["metadata"]
        for session in self._sessions:
            if session.wants(meta["namespace"], meta["name"]):
                session.queue.append(line)
        self._lock.notify_all()


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _gone() -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version",
        "reason": "Expired",
        "code": 410,
    }
