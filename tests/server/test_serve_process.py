"""`csi-wasm serve` as a process: socket lifecycle, SIGTERM, restart, logs."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator

import pytest
from support.driver import DriverProcess, NodeDirs, connect
from support.kubelet import dockerconfigjson
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2
from csi_wasm.mounts import find_mount


@pytest.fixture
def process(
    node_dirs: NodeDirs, registry: Registry, auth_registry: Registry
) -> Iterator[DriverProcess]:
    driver = DriverProcess(
        node_dirs,
        ["--insecure-registry", registry.host, "--insecure-registry", auth_registry.host],
    )
    try:
        yield driver
    finally:
        driver.kill()


def test_stale_socket_is_replaced(process: DriverProcess, node_dirs: NodeDirs) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(node_dirs.socket))
    stale.close()
    process.start()
    with connect(node_dirs) as kubelet:
        assert kubelet.identity.Probe(csi_pb2.ProbeRequest()).ready.value


def test_sigterm_keeps_mounts_and_unpublish_works_after_restart(
    process: DriverProcess, node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4096, "restart")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    process.start()
    with connect(node_dirs) as kubelet:
        pods = [kubelet.new_pod(name=f"p{i}") for i in range(2)]
        for pod in pods:
            kubelet.publish(pod, {"url": pushed.reference})

    assert process.terminate() == 0
    assert not node_dirs.socket.exists()
    for pod in pods:  # running pods never notice the driver going away
        assert find_mount(pod.target) is not None
        assert (pod.target / "plugin.wasm").read_bytes() == module

    process.start()
    with connect(node_dirs) as kubelet:
        kubelet.publish(pods[0], {"url": pushed.reference})  # idempotent across restarts
        for pod in pods:
            kubelet.unpublish(pod)
            assert find_mount(pod.target) is None
            assert not pod.target.exists()
    assert process.terminate() == 0


def test_one_json_line_per_rpc_and_no_secret_in_logs(
    process: DriverProcess, node_dirs: NodeDirs, auth_registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", make_module(2048, "logs"))
    uncached = push_wasm_artifact(auth_registry, unique_repo, "v2", make_module(2048, "logs-2"))
    username, password = auth_registry.credentials
    secrets = dockerconfigjson(auth_registry.host, username, password)
    process.start()
    with connect(node_dirs) as kubelet:
        pod = kubelet.new_pod(name="logged", namespace="team-a")
        kubelet.publish(pod, {"url": pushed.reference}, secrets=secrets)
        denied = kubelet.new_pod()
        wrong = dockerconfigjson(auth_registry.host, username, password + "-wrong")
        with pytest.raises(Exception, match="refused"):
            kubelet.publish(denied, {"url": uncached.reference}, secrets=wrong)
        kubelet.identity.Probe(csi_pb2.ProbeRequest())
        kubelet.unpublish(pod)
    process.terminate()

    log = process.log()
    for secret in (
        password,
        base64.b64encode(f"{username}:{password}".encode()).decode(),
        secrets[".dockerconfigjson"],
    ):
        assert secret not in log
    entries = [json.loads(line) for line in log.splitlines()]
    rpcs = [e for e in entries if e.get("method")]
    publish = [e for e in rpcs if e["method"] == "NodePublishVolume"]
    assert [e["code"] for e in publish] == ["OK", "PERMISSION_DENIED"]
    assert publish[0]["volume_id"] == pod.volume_id
    assert publish[0]["pod"] == "team-a/logged"
    assert publish[0]["digest"] == f"sha256:{pushed.module_sha256}"
    assert isinstance(publish[0]["duration_ms"], float)
    assert [e["code"] for e in rpcs if e["method"] == "NodeUnpublishVolume"] == ["OK"]
    assert not [e for e in rpcs if e["method"] == "Probe"]  # debug level only


def test_every_rpc_line_is_written_before_the_process_exits(
    process: DriverProcess, node_dirs: NodeDirs
) -> None:
    process.start()
    with connect(node_dirs) as kubelet:
        for _ in range(300):  # lines queued for the log's writer thread
            kubelet.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert process.terminate() == 0  # straight after the last call

    entries = [json.loads(line) for line in process.log().splitlines()]
    assert [e.get("method") for e in entries].count("NodeGetInfo") == 300
    assert all(e["code"] == "OK" for e in entries if e.get("method") == "NodeGetInfo")
