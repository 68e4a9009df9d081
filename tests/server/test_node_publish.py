"""NodePublishVolume / NodeUnpublishVolume end to end: real registry, gRPC, bind mounts."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import grpc
import pytest
from support.driver import NodeDirs, StartDriver, wait_for
from support.gate import gated_proxy
from support.kubelet import Kubelet, rpc_error
from support.oci import push_compat_image, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.mounts import find_mount


def _assert_published(target: Path, module: bytes) -> None:
    assert os.listdir(target) == ["plugin.wasm"]
    assert (target / "plugin.wasm").read_bytes() == module
    assert stat.S_IMODE((target / "plugin.wasm").stat().st_mode) == 0o444
    entry = find_mount(target)
    assert entry is not None
    assert {"ro", "nosuid", "nodev", "noexec"} <= entry.options


def test_publish_wasm_artifact_read_only(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4096, "artifact")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()

    kubelet.publish(pod, {"url": f"oci://{pushed.reference}"})

    _assert_published(pod.target, module)
    with pytest.raises(OSError) as caught:
        (pod.target / "plugin.wasm").write_bytes(b"x")
    assert caught.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError) as caught:
        (pod.target / "new-file").write_bytes(b"x")
    assert caught.value.errno == errno.EROFS


@pytest.mark.parametrize("flavor", ["docker", "oci"])
def test_publish_compat_image_built_by_our_pusher(
    kubelet: Kubelet, registry: Registry, unique_repo: str, flavor: str
) -> None:
    module = make_module(2048, f"compat-{flavor}")
    pushed = push_compat_image(registry, unique_repo, "v1", module, flavor)  # type: ignore[arg-type]
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference, "sha256": pushed.module_sha256})
    _assert_published(pod.target, module)


def test_unpublish_removes_mount_target_and_record(
    kubelet: Kubelet, registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "unpub"))
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference})
    assert list((node_dirs.root / "volumes").iterdir())

    kubelet.unpublish(pod)

    assert find_mount(pod.target) is None
    assert not pod.target.exists()
    assert not list((node_dirs.root / "volumes").iterdir())
    kubelet.unpublish(pod)  # again: still OK


def test_publish_is_idempotent(kubelet: Kubelet, registry: Registry, unique_repo: str) -> None:
    module = make_module(1024, "idem")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": pushed.reference})
    kubelet.publish(pod, {"url": pushed.reference})
    _assert_published(pod.target, module)
    lines = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if f" {pod.target} " in line
    ]
    assert len(lines) == 1


def test_same_volume_with_other_module_is_already_exists(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    first = push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "a"))
    second = push_wasm_artifact(registry, unique_repo, "v2", make_module(1024, "b"))
    pod = kubelet.new_pod()
    kubelet.publish(pod, {"url": first.reference})
    code, message = rpc_error(lambda: kubelet.publish(pod, {"url": second.reference}))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert pod.volume_id in message


def test_three_pods_share_one_copy_and_one_download(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    module = make_module(64 * 1024, "shared")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pods = [kubelet.new_pod(name=f"app-{i}") for i in range(3)]
    for pod in pods:
        kubelet.publish(pod, {"url": pushed.reference})
    inodes = {(pod.target / "plugin.wasm").stat().st_ino for pod in pods}
    assert len(inodes) == 1
    assert registry.requests_matching("GET", rf"/v2/{unique_repo}/blobs/{pushed.layer_digest}") == 1


def test_concurrent_publishes_share_one_download(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    module = make_module(1024 * 1024, "herd")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pods = [kubelet.new_pod(name=f"herd-{i}") for i in range(12)]
    calls = [
        kubelet.node.NodePublishVolume.future(
            kubelet.publish_request(pod, {"url": pushed.reference}), timeout=60
        )
        for pod in pods
    ]
    for call in calls:
        call.result()
    for pod in pods:
        assert (pod.target / "plugin.wasm").read_bytes() == module
    assert registry.requests_matching("GET", rf"/v2/{unique_repo}/blobs/{pushed.layer_digest}") == 1


def test_pull_outlives_the_rpc_and_the_retry_joins_it(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    module = make_module(8192, "slow")
    push_wasm_artifact(registry, unique_repo, "v1", module)
    with gated_proxy(registry.url) as proxy:
        kubelet = start_driver(insecure_registries=frozenset({proxy.host}))
        url = f"{proxy.host}/{unique_repo}:v1"
        pod = kubelet.new_pod()

        code, _ = rpc_error(lambda: kubelet.publish(pod, {"url": url}, timeout=2.0))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert proxy.blob_waiting.is_set()

        retry = kubelet.node.NodePublishVolume.future(
            kubelet.publish_request(pod, {"url": url}), timeout=30
        )
        proxy.release.set()
        retry.result()
        assert proxy.blob_requests == 1
    assert (pod.target / "plugin.wasm").read_bytes() == module


def test_second_operation_on_a_busy_volume_is_aborted(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "busy"))
    with gated_proxy(registry.url) as proxy:
        kubelet = start_driver(insecure_registries=frozenset({proxy.host}))
        pod = kubelet.new_pod()
        url = f"{proxy.host}/{unique_repo}:v1"
        first = kubelet.node.NodePublishVolume.future(
            kubelet.publish_request(pod, {"url": url}), timeout=30
        )
        wait_for(proxy.blob_waiting.is_set, what="the first pull to reach the blob")
        code, message = rpc_error(lambda: kubelet.publish(pod, {"url": url}))
        assert code == grpc.StatusCode.ABORTED
        assert "in progress" in message
        code, _ = rpc_error(lambda: kubelet.unpublish(pod))
        assert code == grpc.StatusCode.ABORTED
        proxy.release.set()
        first.result()


def test_digest_mismatch_leaves_nothing_cached(
    kubelet: Kubelet, registry: Registry, unique_repo: str, node_dirs: NodeDirs
) -> None:
    pushed = push_compat_image(registry, unique_repo, "v1", make_module(1024, "mismatch"))
    pod = kubelet.new_pod()
    code, message = rpc_error(
        lambda: kubelet.publish(pod, {"url": pushed.reference, "sha256": "ab" * 32})
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "sha256 mismatch" in message and "ab" * 32 in message
    assert not list((node_dirs.root / "modules").iterdir())
    assert not list((node_dirs.root / "tmp").iterdir())
    assert not list((node_dirs.root / "volumes").iterdir())
    assert find_mount(pod.target) is None


def test_sha256_may_name_the_manifest(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    module = make_module(1024, "by-manifest")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pod = kubelet.new_pod()
    kubelet.publish(
        pod, {"url": pushed.reference, "sha256": pushed.manifest_digest.removeprefix("sha256:")}
    )
    _assert_published(pod.target, module)


def test_publish_by_digest_then_from_cache_without_registry(
    start_driver: StartDriver, registry: Registry, unique_repo: str
) -> None:
    module = make_module(1024, "digest")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    kubelet = start_driver(insecure_registries=frozenset({registry.host}))
    first, second = kubelet.new_pod(), kubelet.new_pod()
    kubelet.publish(first, {"url": pushed.digest_reference})
    before = registry.requests_matching("GET", rf"/v2/{unique_repo}/")
    kubelet.publish(second, {"url": pushed.digest_reference})
    assert registry.requests_matching("GET", rf"/v2/{unique_repo}/") == before
    _assert_published(second.target, module)


def test_always_policy_follows_a_moved_tag(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    old, new = make_module(1024, "old"), make_module(1024, "new")
    push_wasm_artifact(registry, unique_repo, "latest", old)
    first = kubelet.new_pod()
    kubelet.publish(first, {"url": f"{registry.host}/{unique_repo}"})
    assert (first.target / "plugin.wasm").read_bytes() == old
    push_wasm_artifact(registry, unique_repo, "latest", new)
    second = kubelet.new_pod()
    kubelet.publish(second, {"url": f"{registry.host}/{unique_repo}:latest"})
    assert (second.target / "plugin.wasm").read_bytes() == new
    third = kubelet.new_pod()
    kubelet.publish(
        third, {"url": f"{registry.host}/{unique_repo}:latest", "imagePullPolicy": "IfNotPresent"}
    )
    assert (third.target / "plugin.wasm").read_bytes() == new


def test_many_threads_publish_and_unpublish(
    kubelet: Kubelet, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "churn"))
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(5):
                pod = kubelet.new_pod()
                kubelet.publish(pod, {"url": pushed.reference})
                kubelet.unpublish(pod)
        except BaseException as error:  # collected for the main thread
            errors.append(error)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
