"""A scriptable HTTP(S) server in the test process, standing in for a registry.

Each :class:`FakeServer` is a real ``ThreadingHTTPServer`` on an OS-chosen port.
Tests route paths to handlers; a handler gets an :class:`Exchange` and answers
however it likes: normal replies, 401 challenges, token endpoints, 5xx bursts,
429, redirects, truncated or oversized bodies, trickles, stalls, HTML. Every
request is recorded with its headers so tests can assert what was (not) sent.

Handlers that pace or stall wait on :attr:`FakeServer.stopping`, so stopping the
server releases them at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One request as the server saw it; header names are lower-cased."""

    server: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


class Exchange:
    """A request being served, and the ways to answer it."""

    def __init__(self, handler: _Handler, recorded: Recorded, server: FakeServer) -> None:
        self._handler = handler
        self.request = recorded
        self.server = server

    @property
    def headers(self) -> dict[str, str]:
        return self.request.headers

    def reply(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """A complete response with a correct Content-Length."""
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        self.start(status, all_headers)
        self.write(body)

    def start(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        """Status line and headers only; the body is up to the caller."""
        self._handler.send_response(status)
        for name, value in (headers or {}).items():
            self._handler.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            # Without a length the body ends when the connection closes.
            self._handler.send_header("Connection", "close")
            self._handler.close_connection = True
        self._handler.end_headers()
        self._handler.wfile.flush()

    def write(self, data: bytes) -> None:
        self._handler.wfile.write(data)
        self._handler.wfile.flush()

    def close(self) -> None:
        """Drop the connection after this response, whatever it declared."""
        self._handler.close_connection = True


Handler = Callable[[Exchange], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        recorded = Recorded(
            server=fake.host,
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        with fake.lock:
            fake.requests.append(recorded)
            handler = fake.routes.get((self.command, split.path))
        exchange = Exchange(self, recorded, fake)
        if handler is None:
            not_found(exchange)
            return
        try:
            handler(exchange)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 makes concurrent clients wait for SYN retries
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-exchange is what many tests do on purpose.
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handle_error(request, client_address)


class FakeServer:
    """A real HTTP server on ``host`` (127.0.0.1 by default) with scriptable routes."""

    def __init__(self, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None) -> None:
        self._server = _Server((host, 0), _Handler)
        self._server.fake = self
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.host = f"{host}:{self._server.server_address[1]}"
        self.url = f"{self.scheme}://{self.host}"
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def route(self, path: str, handler: Handler, method: str = "GET") -> None:
        with self.lock:
            self.routes[(method, path)] = handler

    def sequence(self, path: str, *handlers: Handler, method: str = "GET") -> None:
        """Serve ``handlers`` in turn for ``path``; the last one repeats."""
        queue = list(handlers)

        def next_handler(exchange: Exchange) -> None:
            with self.lock:
                handler = queue.pop(0) if len(queue) > 1 else queue[0]
            handler(exchange)

        self.route(path, next_handler, method)

    def requests_to(self, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


# -- handler factories ----------------------------------------------------------


def not_found(exchange: Exchange) -> None:
    error_json(404, "NAME_UNKNOWN")(exchange)


def reply(
    body: bytes = b"", status: int = 200, headers: Mapping[str, str] | None = None
) -> Handler:
    def handle(exchange: Exchange) -> None:
        exchange.reply(status, body, headers)

    return handle


def json_reply(
    document: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Handler:
    return reply(
        json.dumps(document).encode(),
        status,
        {"Content-Type": "application/json", **(headers or {})},
    )


def error_json(status: int, code: str, headers: Mapping[str, str] | None = None) -> Handler:
    return json_reply({"errors": [{"code": code, "message": code.lower()}]}, status, headers)


def redirect(location: str, status: int = 307) -> Handler:
    return reply(b"", status, {"Location": location})


def close_delimited(body: bytes, status: int = 200) -> Handler:
    """A body without Content-Length, ended by closing the connection."""

    def handle(exchange: Exchange) -> None:
        exchange.start(status, {"Content-Type": "application/octet-stream"})
        exchange.write(body)

    return handle


def truncated(body: bytes, declared: int) -> Handler:
    """Declares ``declared`` bytes, sends ``body`` (fewer) and hangs up."""

    def handle(exchange: Exchange) -> None:
        exchange.start(200, {"Content-Length": str(declared)})
        exchange.write(body)
        exchange.close()

    return handle


def trickle(first: bytes, declared: int, step: bytes = b"x", interval: float = 0.02) -> Handler:
    """Sends ``first`` then ``step`` every ``interval`` s until the server stops."""

    def handle(exchange: Exchange) -> None:
        exchange.start(200, {"Content-Length": str(declared)})
        exchange.write(first)
        sent = len(first)
        while sent < declared and not exchange.server.stopping.wait(interval):
            exchange.write(step)
            sent += len(step)
        exchange.close()

    return handle


def stall(first: bytes, declared: int) -> Handler:
    """Sends ``first`` then nothing more until the server stops."""

    def handle(exchange: Exchange) -> None:
        exchange.start(200, {"Content-Length": str(declared)})
        exchange.write(first)
        exchange.server.stopping.wait()
        exchange.close()

    return handle


def require_basic(username: str, password: str, inner: Handler, realm: str = "fake") -> Handler:
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def handle(exchange: Exchange) -> None:
        if exchange.headers.get("authorization") != expected:
            error_json(401, "UNAUTHORIZED", {"WWW-Authenticate": f'Basic realm="{realm}"'})(
                exchange
            )
            return
        inner(exchange)

    return handle


def require_bearer(
    valid: Callable[[str], bool], realm: str, service: str, scope: str, inner: Handler
) -> Handler:
    challenge = f'Bearer realm="{realm}",service="{service}",scope="{scope}"'

    def handle(exchange: Exchange) -> None:
        header = exchange.headers.get("authorization", "")
        if not header.startswith("Bearer ") or not valid(header[len("Bearer ") :]):
            error_json(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})(exchange)
            return
        inner(exchange)

    return handle


@dataclass
class TokenService:
    """A Docker token endpoint: checks Basic credentials (if set), mints numbered tokens."""

    username: str | None = None
    password: str | None = None
    expires_in: int | None = 300
    issued: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def valid(self, token: str) -> bool:
        with self.lock:
            return token in self.issued

    def handle(self, exchange: Exchange) -> None:
        if self.username is not None:
            expected = (
                "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            )
            if exchange.headers.get("authorization") != expected:
                error_json(401, "UNAUTHORIZED")(exchange)
                return
        with self.lock:
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append(token)
        document: dict[str, Any] = {"token": token}
        if self.expires_in is not None:
            document["expires_in"] = self.expires_in
        json_reply(document)(exchange)


# -- content ---------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A one-layer Wasm artifact: manifest bytes and the blob they describe."""

    blob: bytes
    manifest: bytes
    manifest_digest: str
    blob_digest: str


def make_artifact(blob: bytes = b"\x00asm\x01\x00\x00\x00" + b"\x01" * 100) -> Artifact:
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.wasm.config.v1+json",
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [{"mediaType": WASM_LAYER, "digest": sha256_digest(blob), "size": len(blob)}],
        }
    ).encode()
    return Artifact(blob, manifest, sha256_digest(manifest), sha256_digest(blob))


def serve_artifact(
    server: FakeServer,
    repository: str,
    artifact: Artifact,
    tag: str = "v1",
    wrap: Callable[[Handler], Handler] = lambda h: h,
) -> None:
    """Route the manifest (by tag and digest) and the blob, each wrapped by ``wrap``."""
    manifest = reply(
        artifact.manifest,
        headers={"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": artifact.manifest_digest},
    )
    server.route(f"/v2/{repository}/manifests/{tag}", wrap(manifest))
    server.route(f"/v2/{repository}/manifests/{artifact.manifest_digest}", wrap(manifest))
    server.route(f"/v2/{repository}/blobs/{artifact.blob_digest}", wrap(reply(artifact.blob)))


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def make_self_signed(directory: Path) -> TlsFiles:
    """A certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return TlsFiles(cert, key)


# -- handlers for plain-URL (http_source) tests -------------------------------------


def chunked(body: bytes, piece: int = 1024, headers: Mapping[str, str] | None = None) -> Handler:
    """A body sent with ``Transfer-Encoding: chunked`` in pieces of ``piece`` bytes."""

    def handle(exchange: Exchange) -> None:
        exchange.start(200, {"Transfer-Encoding": "chunked", **(headers or {})})
        for start in range(0, len(body), piece):
            part = body[start : start + piece]
            exchange.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        exchange.write(b"0\r\n\r\n")

    return handle
