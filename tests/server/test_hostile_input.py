"""Hostile packages and registries: refused with the right code, nothing outside --root,
nothing unverified in the cache."""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from support.driver import NodeDirs, StartDriver
from support.kubelet import Kubelet, rpc_error
from support.oci import encode_manifest, push_blob, push_manifest
from support.registry import Registry
from support.wasm import make_module

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MODULE = make_module(2048, "hostile")


def _tar(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        add(archive)
    return gzip.compress(buffer.getvalue())


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> Callable[[tarfile.TarFile], None]:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        archive.addfile(info, io.BytesIO(data) if data else None)

    return add


def _both(*adds: Callable[[tarfile.TarFile], None]) -> Callable[[tarfile.TarFile], None]:
    def add(archive: tarfile.TarFile) -> None:
        for each in adds:
            each(archive)

    return add


def _push_image(
    registry: Registry, repo: str, layer: bytes, layer_type: str = TAR_GZIP, size: int | None = None
) -> str:
    config = push_blob(
        registry, repo, encode_manifest({"architecture": "wasm", "os": "wasip1"}), OCI_CONFIG
    )
    blob = push_blob(registry, repo, layer, layer_type)
    described = blob.as_dict()
    if size is not None:
        described["size"] = size
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.as_dict(),
        "layers": [described],
    }
    push_manifest(registry, repo, "v1", manifest, OCI_MANIFEST)
    return f"{registry.host}/{repo}:v1"


def _assert_nothing_cached(dirs: NodeDirs) -> None:
    assert not list((dirs.root / "modules").iterdir())
    assert not list((dirs.root / "tmp").iterdir())
    assert not list((dirs.root / "volumes").iterdir())


HOSTILE_LAYERS = {
    "traversal": _member("../plugin.wasm", data=MODULE),
    "deep traversal": _member("a/../../plugin.wasm", data=MODULE),
    "absolute": _member("/plugin.wasm", data=MODULE),
    "symlink": _member("plugin.wasm", tarfile.SYMTYPE, link="/etc/passwd"),
    "hardlink": _both(
        _member("real.wasm", data=MODULE), _member("plugin.wasm", tarfile.LNKTYPE, link="real.wasm")
    ),
    "device": _member("plugin.wasm", tarfile.CHRTYPE),
    "fifo": _member("plugin.wasm", tarfile.FIFOTYPE),
    "no module": _member("other.wasm", data=MODULE),
    "not wasm": _member("plugin.wasm", data=b"#!/bin/sh\nrm -rf /\n"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_hostile_tarballs_are_refused(
    kubelet: Kubelet, registry: Registry, unique_repo: str, node_dirs: NodeDirs, case: str
) -> None:
    url = _push_image(registry, unique_repo, _tar(HOSTILE_LAYERS[case]))
    pod = kubelet.new_pod()
    code, message = rpc_error(lambda: kubelet.publish(pod, {"url": url}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    _assert_nothing_cached(node_dirs)
    assert not (node_dirs.base / "plugin.wasm").exists()
    assert not pod.target.exists()


def test_gzip_bomb_is_stopped_at_the_limit(
    start_driver: StartDriver, registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    kubelet = start_driver(
        insecure_registries=frozenset({registry.host}), max_module_bytes=1024 * 1024
    )
    zeros = b"\0" * (64 * 1024 * 1024)
    bomb = _tar(_member("plugin.wasm", data=b"\0asm\x01\0\0\0" + zeros))
    assert len(bomb) < 1024 * 1024  # small on the wire
    url = _push_image(registry, unique_repo, bomb)
    code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": url}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--max-module-bytes" in message
    _assert_nothing_cached(node_dirs)


def test_layer_larger_than_its_descriptor(
    kubelet: Kubelet, registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    layer = _tar(_member("plugin.wasm", data=MODULE))
    url = _push_image(registry, unique_repo, layer, size=len(layer) // 2)
    code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": url}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert "more" in message or "larger" in message
    _assert_nothing_cached(node_dirs)


def test_wrong_media_type_for_the_bytes(
    kubelet: Kubelet, registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    url = _push_image(registry, unique_repo, MODULE, layer_type=TAR_GZIP)  # says tar+gzip, is Wasm
    code, _ = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": url}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    _assert_nothing_cached(node_dirs)


class _HtmlRegistry(BaseHTTPRequestHandler):
    """A captive portal or misconfigured proxy: HTML for every request."""

    def do_GET(self) -> None:
        body = b"<html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def html_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_registry_answering_html(
    start_driver: StartDriver, html_registry: str, node_dirs: NodeDirs
) -> None:
    kubelet = start_driver(insecure_registries=frozenset({html_registry}))
    code, message = rpc_error(
        lambda: kubelet.publish(kubelet.new_pod(), {"url": f"{html_registry}/a/b:v1"})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert "JSON" in message or "manifest" in message
    _assert_nothing_cached(node_dirs)
