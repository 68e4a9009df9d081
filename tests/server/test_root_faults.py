"""Faults of the driver's root, end to end: named, with the contract's code, and survived.

Real faults on real filesystems: a tmpfs the test makes read-only or fills, a root the
driver's user may not write, a driver process out of file descriptors (its limit
lowered with prlimit). Each time the root is repaired afterwards and publishes work
again without a restart. Only EIO, which no filesystem here can be made to give, comes
from a seam (tests/test_node.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.disks import Tmpfs, tmpfs
from support.driver import DriverProcess, NodeDirs, connect, in_process, wait_for
from support.kubelet import Kubelet, rpc_error
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2
from csi_wasm.cache.store import ModuleStore


@pytest.fixture
def root_disk(node_dirs: NodeDirs) -> Iterator[Tmpfs]:
    """The driver's root on its own 4 MiB tmpfs."""
    with tmpfs(node_dirs.root, size="4m") as disk:
        yield disk


@pytest.fixture
def modules(registry: Registry, unique_repo: str) -> dict[str, str]:
    """Two small modules in the registry: name -> reference."""
    return {
        name: push_wasm_artifact(
            registry, unique_repo, name, make_module(16 * 1024, f"{unique_repo}-{name}")
        ).reference
        for name in ("one", "two")
    }


def ready(kubelet: Kubelet) -> bool:
    return kubelet.identity.Probe(csi_pb2.ProbeRequest()).ready.value


def run_cli(*args: str, without: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m csi_wasm ARGS``; ``without``: capabilities dropped (setpriv's list)."""
    prefix = ["setpriv", f"--bounding-set={without}", "--"] if without else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "csi_wasm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


@contextlib.contextmanager
def out_of_descriptors(pid: int) -> Iterator[None]:
    """Process ``pid`` can open no new file descriptor (its soft limit: its lowest free one)."""
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = min(set(range(len(used) + 1)) - used)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)


def one_line(stderr: str) -> str:
    """The one line a failed command printed (besides its JSON log records)."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith('{"time"')]
    assert len(lines) == 1, stderr
    return lines[0]


# at start


def test_serve_on_a_read_only_root_says_so_in_one_line_then_starts_once_repaired(
    node_dirs: NodeDirs, root_disk: Tmpfs, registry: Registry, modules: dict[str, str]
) -> None:
    root_disk.read_only()
    failed = run_cli("serve", *node_dirs.serve_flags())
    assert failed.returncode == 1
    line = one_line(failed.stderr)
    assert line.startswith(f"csi-wasm: {node_dirs.root}/")
    assert "Read-only file system; make the driver's --root writable again" in line
    assert not node_dirs.socket.exists()

    root_disk.writable()
    driver = DriverProcess(node_dirs, ["--insecure-registry", registry.host]).start()
    try:
        with connect(node_dirs) as kubelet:
            assert ready(kubelet)
            kubelet.publish(kubelet.new_pod(), {"url": modules["one"]})
    finally:
        driver.kill()


def test_serve_on_a_full_root_says_so_in_one_line_then_starts_once_there_is_room(
    node_dirs: NodeDirs, root_disk: Tmpfs, registry: Registry, modules: dict[str, str]
) -> None:
    root_disk.fill()
    failed = run_cli("serve", *node_dirs.serve_flags())
    assert failed.returncode == 1
    line = one_line(failed.stderr)
    assert line.startswith(f"csi-wasm: {node_dirs.root}/")
    assert line.endswith(
        ": No space left on device; the disk is full: free space there or lower --cache-max-bytes"
    )

    root_disk.empty()
    driver = DriverProcess(node_dirs, ["--insecure-registry", registry.host]).start()
    try:
        with connect(node_dirs) as kubelet:
            kubelet.publish(kubelet.new_pod(), {"url": modules["one"]})
    finally:
        driver.kill()


def test_serve_on_a_root_it_may_not_create_says_so_in_one_line(node_dirs: NodeDirs) -> None:
    # root, but without the capability to ignore file modes: a directory of someone else's
    parent = node_dirs.base / "not-yours"
    parent.mkdir(mode=0o755)
    os.chown(parent, 65534, 65534)
    flags = [*node_dirs.serve_flags(), "--root", str(parent / "root")]
    failed = run_cli("serve", *flags, without="-dac_override,-dac_read_search")
    assert failed.returncode == 1
    line = one_line(failed.stderr)
    assert line == (
        f"csi-wasm: {parent / 'root'}: Permission denied; "
        "check the owner, mode and security labels of the path"
    )


def test_gc_and_fsck_on_a_read_only_root_say_so_in_one_line(
    node_dirs: NodeDirs, root_disk: Tmpfs
) -> None:
    store = ModuleStore(node_dirs.root)
    store.prepare()
    damaged = store.module_dir("ab" * 32)
    damaged.mkdir()
    (damaged / "plugin.wasm").write_bytes(b"not what its name promises")  # fsck must move it
    root_disk.read_only()
    for command in ("gc", "fsck"):
        failed = run_cli(command, "--root", str(node_dirs.root))
        assert failed.returncode == 1, command
        line = one_line(failed.stderr)
        assert line.startswith(f"csi-wasm: {node_dirs.root}/"), line
        assert line.endswith(
            ": Read-only file system; "
            "make the driver's --root writable again (remount it read-write)"
        ), line


# under a running driver


def test_a_root_gone_read_only_is_unavailable_and_recovers_without_a_restart(
    node_dirs: NodeDirs, root_disk: Tmpfs, registry: Registry, modules: dict[str, str]
) -> None:
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host}))
    with in_process(node_dirs, settings) as (_driver, kubelet):
        first = kubelet.new_pod(name="first")
        kubelet.publish(first, {"url": modules["one"]})
        assert ready(kubelet)

        root_disk.read_only()
        assert not ready(kubelet)
        cached, new = kubelet.new_pod(name="cached"), kubelet.new_pod(name="new")
        for pod, url in ((cached, modules["one"]), (new, modules["two"])):
            code, message = rpc_error(lambda: kubelet.publish(pod, {"url": url}))  # noqa: B023
            assert code == grpc.StatusCode.UNAVAILABLE, message
            assert message.startswith(f"{node_dirs.root}/"), message
            assert "Read-only file system" in message and "kubelet retries" in message
        code, message = rpc_error(lambda: kubelet.unpublish(first))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert message.startswith(f"{node_dirs.root}/volumes/")

        root_disk.writable()
        assert ready(kubelet)
        kubelet.unpublish(first)  # kubelet's retry
        for pod, url in ((cached, modules["one"]), (new, modules["two"])):
            kubelet.publish(pod, {"url": url})
            assert (pod.target / "plugin.wasm").is_file()


def test_a_full_root_is_resource_exhausted_and_recovers_without_a_restart(
    node_dirs: NodeDirs, root_disk: Tmpfs, registry: Registry, modules: dict[str, str]
) -> None:
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host}))
    with in_process(node_dirs, settings) as (_driver, kubelet):
        kubelet.publish(kubelet.new_pod(name="first"), {"url": modules["one"]})

        root_disk.fill()
        assert ready(kubelet)  # a full disk is capacity, not a broken node: GC can make room
        cached, new = kubelet.new_pod(name="cached"), kubelet.new_pod(name="new")
        code, message = rpc_error(lambda: kubelet.publish(cached, {"url": modules["one"]}))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert message.startswith(f"{node_dirs.root}/volumes/")
        assert "No space left on device; the disk is full" in message
        code, message = rpc_error(lambda: kubelet.publish(new, {"url": modules["two"]}))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no unused module can be evicted" in message  # "one" is in use

        root_disk.empty()
        for pod, url in ((cached, modules["one"]), (new, modules["two"])):
            kubelet.publish(pod, {"url": url})
            assert (pod.target / "plugin.wasm").is_file()


def test_a_driver_out_of_file_descriptors_is_unavailable_and_recovers(
    node_dirs: NodeDirs, registry: Registry, modules: dict[str, str]
) -> None:
    driver = DriverProcess(node_dirs, ["--insecure-registry", registry.host]).start()
    assert driver.process is not None
    pid = driver.process.pid
    try:
        with connect(node_dirs) as kubelet:
            kubelet.publish(kubelet.new_pod(name="first"), {"url": modules["one"]})
            pod = kubelet.new_pod(name="second")
            with out_of_descriptors(pid):
                assert not ready(kubelet)
                code, message = rpc_error(lambda: kubelet.publish(pod, {"url": modules["one"]}))
            assert code == grpc.StatusCode.UNAVAILABLE
            assert message.startswith(f"{node_dirs.root}/")
            assert "Too many open files; the driver ran out of file descriptors" in message

            assert ready(kubelet)
            kubelet.publish(pod, {"url": modules["one"]})
    finally:
        driver.kill()
    assert "Traceback" not in driver.log()


def test_gc_beside_a_driver_out_of_descriptors_says_so_in_one_line_and_works_once_repaired(
    node_dirs: NodeDirs, registry: Registry
) -> None:
    driver = DriverProcess(node_dirs, ["--insecure-registry", registry.host]).start()
    assert driver.process is not None
    pid = driver.process.pid
    gc = ("gc", "--root", str(node_dirs.root))
    try:
        wait_for(lambda: '"msg": "serving"' in driver.log(), what="the driver to finish starting")
        with out_of_descriptors(pid):
            # accept(2) took its descriptor before the limit came down: the collection fails
            failed = run_cli(*gc)
            wait_for(
                lambda: "accepting gc requests failed" in driver.log(),
                timeout=30,
                what="the driver's next accept failing",
            )
        worked = run_cli(*gc)
    finally:
        driver.kill()
    assert failed.returncode == 1
    assert one_line(failed.stdout + failed.stderr) == (  # gc prints everything on stdout
        f"csi-wasm: the running driver could not collect: {node_dirs.root / '.lock'}: "
        "Too many open files; the driver ran out of file descriptors: raise its open-file "
        "limit (ulimit -n, LimitNOFILE)"
    )
    assert worked.returncode == 0, worked.stderr
    assert worked.stdout.splitlines()[-1].startswith("freed 0 bytes in 0 module(s)")
    log = driver.log()
    assert log.count("accepting gc requests failed") == 1  # retried every second, told once
    assert "accepting gc requests works again" in log
    assert "Traceback" not in log
