"""A fake Kubernetes API server that knows core/v1 Events, for tests of csi_wasm.events.

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
