"""Every gRPC code NodePublishVolume can return, with a message a user can act on."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.driver import NodeDirs, StartDriver
from support.kubelet import Kubelet, dockerconfigjson, rpc_error
from support.oci import push_blob, push_compat_image, push_manifest, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2


@pytest.mark.parametrize(
    ("attributes", "needle"),
    [
        ({}, "'url' is required"),
        ({"url": "ghcr.io/acme/f:v1", "color": "blue"}, "verifyKeys, abi"),
        ({"url": "ghcr.io/Acme/f:v1"}, "ghcr.io/Acme/f:v1"),
        ({"url": "file:///etc/passwd"}, "scheme 'file'"),
        ({"url": "https://example.com/f.wasm"}, "'sha256' is required"),
        ({"url": "ghcr.io/acme/f:v1", "sha256": "xyz"}, "64 hex digits"),
        ({"url": "ghcr.io/acme/f:v1", "imagePullPolicy": "Never"}, "Always, IfNotPresent"),
    ],
)
def test_bad_attributes_are_invalid_argument(
    kubelet: Kubelet, attributes: dict[str, str], needle: str
) -> None:
    pod = kubelet.new_pod()
    code, message = rpc_error(lambda: kubelet.publish(pod, attributes))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in message


def test_block_capability_is_invalid_argument(kubelet: Kubelet) -> None:
    pod = kubelet.new_pod()
    code, message = rpc_error(lambda: kubelet.publish(pod, {"url": "a/b:c"}, block=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "block" in message


def test_missing_fields_are_invalid_argument(kubelet: Kubelet) -> None:
    pod = kubelet.new_pod()
    request = kubelet.publish_request(pod, {"url": "a/b:c"})
    request.ClearField("volume_capability")
    code, message = rpc_error(lambda: kubelet.node.NodePublishVolume(request))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "volume_capability is required")
    request = kubelet.publish_request(pod, {"url": "a/b:c"})
    request.volume_id = ""
    code, message = rpc_error(lambda: kubelet.node.NodePublishVolume(request))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "volume_id is required")


@pytest.mark.parametrize(
    "target",
    [
        "relative/mount",
        "/etc/mount",
        "{pods}",
        "{pods}/../escape/mount",
        "{pods}/uid/../../x/mount",
    ],
)
def test_target_outside_the_pods_dir_is_refused(
    kubelet: Kubelet, node_dirs: NodeDirs, target: str
) -> None:
    pod = kubelet.new_pod()
    request = kubelet.publish_request(pod, {"url": "a/b:c"})
    request.target_path = target.format(pods=node_dirs.kubelet_dir / "pods")
    code, _ = rpc_error(lambda: kubelet.node.NodePublishVolume(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (node_dirs.base / "escape").exists()


def test_symlink_escape_is_refused(kubelet: Kubelet, node_dirs: NodeDirs, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = node_dirs.kubelet_dir / "pods" / "evil"
    link.symlink_to(outside)
    pod = kubelet.new_pod()
    request = kubelet.publish_request(pod, {"url": "a/b:c"})
    request.target_path = str(link / "mount")
    code, message = rpc_error(lambda: kubelet.node.NodePublishVolume(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not under" in message
    assert not (outside / "mount").exists()


def test_unknown_tag_and_repository_are_not_found(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "nf"))
    for url in (f"{registry.host}/{unique_repo}:v9", f"{registry.host}/{unique_repo}-missing:v1"):
        pod = kubelet.new_pod()
        code, message = rpc_error(lambda: kubelet.publish(pod, {"url": url}))  # noqa: B023
        assert code == grpc.StatusCode.NOT_FOUND, message
        assert unique_repo in message


def test_unknown_digest_is_not_found(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "nfd"))
    url = f"{registry.host}/{unique_repo}@sha256:{'0' * 64}"
    code, _ = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": url}))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def auth_kubelet(start_driver: StartDriver, auth_registry: Registry) -> Kubelet:
    return start_driver(insecure_registries=frozenset({auth_registry.host}))


def test_private_module_with_credentials(
    auth_kubelet: Kubelet, auth_registry: Registry, unique_repo: str
) -> None:
    module = make_module(2048, "private")
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", module)
    pod = auth_kubelet.new_pod()
    auth_kubelet.publish(
        pod,
        {"url": pushed.reference},
        secrets=dockerconfigjson(auth_registry.host, *auth_registry.credentials),
    )
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_private_module_without_or_with_wrong_credentials_is_permission_denied(
    auth_kubelet: Kubelet, auth_registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", make_module(1024, "denied"))
    code, message = rpc_error(
        lambda: auth_kubelet.publish(auth_kubelet.new_pod(), {"url": pushed.reference})
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "nodePublishSecretRef" in message
    wrong = dockerconfigjson(auth_registry.host, auth_registry.credentials[0], "not-the-password")
    code, message = rpc_error(
        lambda: auth_kubelet.publish(
            auth_kubelet.new_pod(), {"url": pushed.reference}, secrets=wrong
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "not-the-password" not in message


def test_malformed_pull_secret_is_invalid_argument(kubelet: Kubelet) -> None:
    secret = {".dockerconfigjson": "{not json s3cr3t"}
    code, message = rpc_error(
        lambda: kubelet.publish(kubelet.new_pod(), {"url": "a/b:c"}, secrets=secret)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "s3cr3t" not in message


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port on which nothing listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    yield port


def test_unreachable_registry_is_unavailable(start_driver: StartDriver, dead_port: int) -> None:
    host = f"127.0.0.1:{dead_port}"
    kubelet = start_driver(insecure_registries=frozenset({host}))
    code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": f"{host}/a/b:v1"}))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert host in message


def test_not_wasm_is_failed_precondition(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", b"#!/bin/sh\necho not wasm\n")
    code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": pushed.reference}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a WebAssembly module" in message


def test_unsupported_artifact_is_failed_precondition(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    config = push_blob(registry, unique_repo, b"{}", "application/vnd.example.config+json")
    layer = push_blob(registry, unique_repo, b"hello", "application/vnd.example.data")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.as_dict(),
        "layers": [layer.as_dict()],
    }
    push_manifest(registry, unique_repo, "v1", manifest)
    code, message = rpc_error(
        lambda: kubelet.publish(kubelet.new_pod(), {"url": f"{registry.host}/{unique_repo}:v1"})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "application/vnd.example.data" in message and "accepted" in message


def test_too_large_is_failed_precondition(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    kubelet = start_driver(insecure_registries=frozenset({registry.host}), max_module_bytes=4096)
    for pushed in (
        push_wasm_artifact(registry, unique_repo, "raw", make_module(8192, "big")),
        push_compat_image(registry, unique_repo, "tar", make_module(8192, "big-tar")),
    ):
        pod = kubelet.new_pod()
        code, message = rpc_error(lambda: kubelet.publish(pod, {"url": pushed.reference}))  # noqa: B023
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "--max-module-bytes" in message


def test_full_cache_disk_is_resource_exhausted(
    start_driver: StartDriver, registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    node_dirs.root.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(node_dirs.root)], check=True
    )
    kubelet = start_driver(insecure_registries=frozenset({registry.host}))
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(1024 * 1024, "full"))
    code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": pushed.reference}))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk is full" in message
    assert not list((node_dirs.root / "modules").iterdir())


def test_other_node_rpcs_are_unimplemented(kubelet: Kubelet) -> None:
    code, message = rpc_error(
        lambda: kubelet.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest())
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "NodeStageVolume" in message
    code, _ = rpc_error(
        lambda: kubelet.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest())
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED
