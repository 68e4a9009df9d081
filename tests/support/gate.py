"""An HTTP proxy in front of a registry that can hold blob downloads until a test lets go.

It makes "a slow pull" deterministic: the driver's first RPC times out while the
blob is held, the test releases the gate, and kubelet's retry must join the pull.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

_HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-encoding"}


class GatedProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.release = threading.Event()
        self.blob_requests = 0
        self.blob_waiting = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy._forward(self)

            def do_HEAD(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        if "/blobs/" in handler.path:
            with self._lock:
                self.blob_requests += 1
            self.blob_waiting.set()
            self.release.wait(timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
        upstream = requests.request(
            handler.command,
            self.upstream + handler.path,
            headers=headers,
            allow_redirects=False,
            timeout=30,
        )
        handler.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                handler.send_header(name, value)
        body = b"" if handler.command == "HEAD" else upstream.content
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@contextmanager
def gated_proxy(upstream: str) -> Iterator[GatedProxy]:
    proxy = GatedProxy(upstream)
    proxy._thread.start()
    try:
        yield proxy
    finally:
        proxy.release.set()
        proxy.server.shutdown()
        proxy.server.server_close()
