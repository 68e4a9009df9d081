"""Modules named by http(s) URL and sha256: raw, gzip'ed or in a tarball, cached by digest."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import grpc
import pytest
from support.driver import NodeDirs, StartDriver
from support.files import FileServer
from support.kubelet import Kubelet, rpc_error
from support.oci import make_layer_tar
from support.wasm import make_module


@pytest.fixture
def kubelet(start_driver: StartDriver, files: tuple[Path, FileServer]) -> Kubelet:
    return start_driver(insecure_registries=frozenset({files[1].host}))


@pytest.mark.parametrize("shape", ["raw", "gzip", "tar.gz"])
def test_url_module_in_every_shape(
    kubelet: Kubelet, files: tuple[Path, FileServer], shape: str
) -> None:
    directory, server = files
    module = make_module(8192, f"url-{shape}")
    body = {
        "raw": module,
        "gzip": gzip.compress(module),
        "tar.gz": gzip.compress(make_layer_tar({"plugin.wasm": module})),
    }[shape]
    (directory / "filter.bin").write_bytes(body)
    pod = kubelet.new_pod()
    url = f"http://{server.host}/filter.bin?token=s3cr3t"
    kubelet.publish(pod, {"url": url, "sha256": hashlib.sha256(module).hexdigest()})
    assert (pod.target / "plugin.wasm").read_bytes() == module

    again = kubelet.new_pod()
    served = len(server.requests)
    kubelet.publish(again, {"url": url, "sha256": hashlib.sha256(module).hexdigest()})
    assert len(server.requests) == served  # cached by its digest


def test_wrong_sha256_caches_nothing_and_hides_the_query(
    kubelet: Kubelet, files: tuple[Path, FileServer], node_dirs: NodeDirs
) -> None:
    directory, server = files
    (directory / "f.wasm").write_bytes(make_module(1024, "wrong"))
    code, message = rpc_error(
        lambda: kubelet.publish(
            kubelet.new_pod(),
            {"url": f"http://{server.host}/f.wasm?sig=s3cr3t", "sha256": "a" * 64},
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "sha256 mismatch" in message and "s3cr3t" not in message
    assert not list((node_dirs.root / "modules").iterdir())
    assert not list((node_dirs.root / "tmp").iterdir())


def test_missing_file_is_not_found(kubelet: Kubelet, files: tuple[Path, FileServer]) -> None:
    code, _ = rpc_error(
        lambda: kubelet.publish(
            kubelet.new_pod(), {"url": f"http://{files[1].host}/nope.wasm", "sha256": "b" * 64}
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_plain_http_needs_an_insecure_host(
    start_driver: StartDriver, files: tuple[Path, FileServer]
) -> None:
    kubelet = start_driver()
    code, message = rpc_error(
        lambda: kubelet.publish(
            kubelet.new_pod(), {"url": f"http://{files[1].host}/f.wasm", "sha256": "c" * 64}
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "--insecure-registry" in message


def test_a_body_that_is_not_a_module_is_refused(
    kubelet: Kubelet, files: tuple[Path, FileServer]
) -> None:
    directory, server = files
    (directory / "index.html").write_bytes(b"<html><body>login</body></html>")
    code, _ = rpc_error(
        lambda: kubelet.publish(
            kubelet.new_pod(), {"url": f"http://{server.host}/index.html", "sha256": "d" * 64}
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
