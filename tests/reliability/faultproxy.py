"""An HTTP proxy in front of a real registry that breaks requests on purpose.

Every request is forwarded to the upstream registry; a request whose path matches the
current fault's ``target`` (``blobs`` or ``manifests``) is broken instead, the fault's
``times`` times (``None``: until :meth:`FaultProxy.clear`). The faults:

``status``    answer ``status`` (e.g. 503) with a small JSON error body
``throttle``  answer 429 with ``Retry-After: <retry_after>``
``reset``     read the request, then close the connection with a TCP RST
``truncate``  send the headers with the full Content-Length, then half the body, then close
``drip``      send the headers, then one byte every ``drip_interval`` s, until cleared
              (bounded by ``max_drip_seconds``)
``corrupt``   send the whole body with one byte flipped in the middle (same length)
``stall``     send the headers and ``stall_after`` bytes, then hold until released
``body``      answer ``status`` with ``body`` (``application/json``) instead
``bearer``    answer 401 with a Bearer challenge whose realm is this proxy's ``/token``,
              which answers 200 with ``body``; requests with a Bearer token pass

Only 127.0.0.1 is ever listened on or talked to.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import requests

FaultKind = Literal[
    "status", "throttle", "reset", "truncate", "drip", "corrupt", "stall", "body", "bearer"
]
Target = Literal["blobs", "manifests"]

_HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-length", "server", "date"}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    target: Target = "blobs"
    times: int | None = None  # None: until cleared
    status: int = 503
    retry_after: str = "1"
    drip_interval: float = 0.2
    max_drip_seconds: float = 30.0
    stall_after: int = 0
    body: bytes = b""


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        if not upstream.startswith("http://127.0.0.1:"):
            raise ValueError("the fault proxy only fronts a registry on 127.0.0.1")
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Condition()
        self._fault: Fault | None = None
        self._left: int | None = None
        self._cleared = threading.Event()
        self._release = threading.Event()
        self.requests: dict[str, int] = {"blobs": 0, "manifests": 0, "other": 0, "authorized": 0}
        self.broken = 0  # requests a fault was applied to
        self.stalled_bytes = 0  # bytes sent by a ``stall`` fault before holding
        self._session = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: simple and enough

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_HEAD(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- control ----------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._fault = fault
            self._left = fault.times
            self._cleared.clear()
            self._release.clear()

    def clear(self) -> None:
        """No more faults; a dripping or stalled response ends (broken off) at once."""
        with self._lock:
            self._fault = None
            self._left = None
            self._cleared.set()
            self._release.set()
            self._lock.notify_all()

    def count(self, target: str) -> int:
        with self._lock:
            return self.requests[target]

    def wait_for(self, condition: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition():  # type: ignore[operator]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"proxy condition not met within {timeout} s")
                self._lock.wait(min(left, 0.05))

    # -- serving ------------------------------------------------------------------

    def _take(self, target: str) -> Fault | None:
        with self._lock:
            self.requests[target] = self.requests.get(target, 0) + 1
            fault = self._fault
            if fault is None or fault.target != target:
                self._lock.notify_all()
                return None
            if self._left is not None:
                if self._left <= 0:
                    self._lock.notify_all()
                    return None
                self._left -= 1
            self.broken += 1
            self._lock.notify_all()
            return fault

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self._lock:
            current = self._fault
        if path.startswith("/token") and current is not None and current.kind == "bearer":
            _answer(handler, 200, current.body)
            return
        target = "blobs" if "/blobs/" in path else "manifests" if "/manifests/" in path else "other"
        bearer = handler.headers.get("Authorization", "").startswith("Bearer ")
        if current is not None and current.kind == "bearer" and bearer:
            target = "authorized"  # the client has a token: let it through
        fault = self._take(target)
        if fault is not None and fault.kind == "body":
            _answer(handler, fault.status, fault.body)
            return
        if fault is not None and fault.kind == "bearer":
            realm = f'Bearer realm="http://{self.host}/token",service="fault-proxy"'
            _answer(handler, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', realm)
            return
        if fault is not None and fault.kind == "reset":
            _reset(handler)
            return
        if fault is not None and fault.kind in ("status", "throttle"):
            status = 429 if fault.kind == "throttle" else fault.status
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            if fault.kind == "throttle":
                handler.send_header("Retry-After", fault.retry_after)
            handler.end_headers()
            handler.wfile.write(body)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
        upstream = self._session.request(
            handler.command,
            self.upstream + path,
            headers=headers,
            allow_redirects=False,
            timeout=30,
        )
        body = b"" if handler.command == "HEAD" else upstream.content
        handler.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_HEADERS:
                handler.send_header(name, value)
        length = upstream.headers.get("Content-Length", str(len(body)))
        handler.send_header("Content-Length", length)
        handler.end_headers()
        if fault is None or handler.command == "HEAD" or upstream.status_code != 200:
            handler.wfile.write(body)
            return
        self._break_body(handler, fault, body)

    def _break_body(self, handler: BaseHTTPRequestHandler, fault: Fault, body: bytes) -> None:
        out = handler.wfile
        try:
            if fault.kind == "truncate":
                out.write(body[: len(body) // 2])
                out.flush()
                handler.close_connection = True
            elif fault.kind == "corrupt":
                middle = len(body) // 2
                out.write(body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :])
            elif fault.kind == "drip":
                ends = time.monotonic() + fault.max_drip_seconds
                for index in range(len(body)):
                    if self._cleared.is_set() or time.monotonic() > ends:
                        break
                    out.write(body[index : index + 1])
                    out.flush()
                    self._cleared.wait(fault.drip_interval)
            elif fault.kind == "stall":
                out.write(body[: fault.stall_after])
                out.flush()
                with self._lock:
                    self.stalled_bytes = fault.stall_after
                    self._lock.notify_all()
                self._release.wait(timeout=60)
                out.write(body[fault.stall_after :])
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up (or was killed): nothing to do

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()
        self._session.close()


def _answer(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, challenge: str | None = None
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    if challenge is not None:
        handler.send_header("WWW-Authenticate", challenge)
    handler.end_headers()
    handler.wfile.write(body)


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close the client's connection with RST instead of FIN."""
    connection: socket.socket = handler.connection
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    connection.close()


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
