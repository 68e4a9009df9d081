"""The cache over a node's life, end to end: garbage collection racing publishes,
restarts under published volumes (SIGTERM and kill -9), a reboot, adopted mounts,
fsck, and a full disk. Real registry, real gRPC, real bind mounts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from support.driver import DriverProcess, NodeDirs, connect, in_process, wait_for
from support.kubelet import PodVolume, rpc_error
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.cache.fsck import check_store
from csi_wasm.cache.store import ModuleStore
from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords
from csi_wasm.mounts import find_mount, unmount
from csi_wasm.prefetch import PrefetchEntry
from csi_wasm.settings import CacheSettings, ServeSettings

KIB = 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_with(dirs: NodeDirs, registry: Registry, **cache: float) -> ServeSettings:
    settings = dirs.settings(insecure_registries=frozenset({registry.host}))
    return dataclasses.replace(settings, cache=CacheSettings(**cache))  # type: ignore[arg-type]


def blob_gets(registry: Registry, pushed: PushedModule) -> int:
    return registry.requests_matching("GET", rf"/v2/{pushed.repo}/blobs/{pushed.layer_digest}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m csi_wasm ARGS``, as a human would run it beside the driver."""
    return subprocess.run(
        [sys.executable, "-m", "csi_wasm", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": os.fspath(REPO_ROOT)},
        timeout=60,
        check=False,
    )


def records(dirs: NodeDirs) -> list[dict[str, object]]:
    volumes = dirs.root / "volumes"
    return [json.loads(p.read_text()) for p in sorted(volumes.glob("*.json"))]


RECONCILED = "reconciled published volumes with the mount table"


def log_entries(process: DriverProcess, message: str) -> list[dict[str, object]]:
    """Log entries of ``process`` (every run so far) with this message."""
    entries = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    return [e for e in entries if e.get("msg") == message]


# garbage collection racing publishes


def test_gc_evicting_everything_unused_never_breaks_a_publish(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    """GC with a 1-byte budget runs in a loop while pods of four modules come and go."""
    modules = [make_module(16 * KIB, f"race-{i}") for i in range(4)]
    pushed = [push_wasm_artifact(registry, unique_repo, f"v{i}", m) for i, m in enumerate(modules)]
    settings = settings_with(node_dirs, registry, max_bytes=1, gc_interval=3600)
    with in_process(node_dirs, settings) as (driver, kubelet):
        stop = threading.Event()
        collections = 0
        errors: list[BaseException] = []

        def collect() -> None:
            nonlocal collections
            try:
                while not stop.is_set():
                    driver.collector.collect()
                    collections += 1
            except BaseException as error:
                errors.append(error)
                raise

        def publish(i: int) -> tuple[PodVolume, int]:
            which = i % len(modules) if i < 60 else 0
            pod = kubelet.new_pod(name=f"race-{i}")
            kubelet.publish(pod, {"url": pushed[which].reference})
            assert (pod.target / "plugin.wasm").read_bytes() == modules[which]
            if i < 60:  # most pods go away again: their module becomes unused
                kubelet.unpublish(pod)
                assert find_mount(pod.target) is None
            return pod, which

        collector = threading.Thread(target=collect)
        collector.start()
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                published = list(pool.map(publish, range(64)))
            for pod, which in published[60:]:  # still mounted, still right, GC still running
                assert (pod.target / "plugin.wasm").read_bytes() == modules[which]
            for unused in pushed[1:]:
                gone = node_dirs.root / "modules" / unused.module_sha256
                wait_for(lambda: not gone.exists(), what="unused modules to be evicted")  # noqa: B023
            assert (node_dirs.root / "modules" / pushed[0].module_sha256).is_dir()
        finally:
            stop.set()
            collector.join()
        assert errors == [] and collections > 0
        evictions = driver.metrics.registry.get_sample_value(
            "csi_wasm_gc_evictions_total", {"reason": "size"}
        )
        assert evictions is not None and evictions >= 3

        for pod, _ in published[60:]:
            kubelet.unpublish(pod)
        driver.collector.collect()
        assert os.listdir(node_dirs.root / "modules") == []


def test_periodic_gc_evicts_an_unused_module_and_the_next_publish_pulls_it(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4 * KIB, "ttl")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    settings = settings_with(node_dirs, registry, ttl=1e-6, gc_interval=3600)
    with in_process(node_dirs, settings) as (driver, kubelet):
        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": pushed.reference})
        kubelet.unpublish(pod)
        module_dir = node_dirs.root / "modules" / pushed.module_sha256
        driver.gc.wake()
        wait_for(lambda: not module_dir.exists(), what="the periodic collection to evict it")

        again = kubelet.new_pod()
        kubelet.publish(again, {"url": pushed.reference})
        assert (again.target / "plugin.wasm").read_bytes() == module
        assert blob_gets(registry, pushed) == 2


# restarts and reboots


@pytest.fixture
def process(node_dirs: NodeDirs, registry: Registry) -> Iterator[DriverProcess]:
    driver = DriverProcess(node_dirs, ["--insecure-registry", registry.host])
    try:
        yield driver
    finally:
        driver.kill()


def publish_pods(
    node_dirs: NodeDirs, pushed: PushedModule, count: int, name: str = "pod"
) -> list[PodVolume]:
    with connect(node_dirs) as kubelet:
        pods = [kubelet.new_pod(name=f"{name}-{i}") for i in range(count)]
        for pod in pods:
            kubelet.publish(pod, {"url": pushed.reference})
    return pods


@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
def test_restart_keeps_published_volumes_and_unpublish_works(
    process: DriverProcess, node_dirs: NodeDirs, registry: Registry, unique_repo: str, stop: str
) -> None:
    module = make_module(4 * KIB, f"restart-{stop}")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    process.start()
    pods = publish_pods(node_dirs, pushed, 3)

    if stop == "sigterm":
        assert process.terminate() == 0
    else:
        process.kill()
    for pod in pods:  # running pods never notice
        assert (pod.target / "plugin.wasm").read_bytes() == module

    process.start()  # after kill -9 the old socket is still there: wait for the new run
    wait_for(lambda: len(log_entries(process, RECONCILED)) == 2, what="the second start-up")
    first, reconciled = log_entries(process, RECONCILED)
    assert first["published"] == 0
    assert (reconciled["published"], reconciled["dropped"], reconciled["adopted"]) == (3, 0, 0)
    with connect(node_dirs) as kubelet:
        kubelet.publish(pods[0], {"url": pushed.reference})  # idempotent across restarts
        for pod in pods:
            kubelet.unpublish(pod)
            assert find_mount(pod.target) is None
            assert not pod.target.exists()
    assert records(node_dirs) == []
    assert blob_gets(registry, pushed) == 1


def test_reboot_drops_records_and_the_pods_publish_again(
    process: DriverProcess, node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4 * KIB, "reboot")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    process.start()
    pods = publish_pods(node_dirs, pushed, 2)
    assert process.terminate() == 0
    for pod in pods:  # the reboot: every mount is gone, --root survives
        unmount(pod.target)
    (node_dirs.root / "tmp" / "pull-interrupted").write_bytes(b"\0asm half")

    process.start()
    reconciled = log_entries(process, RECONCILED)[-1]
    assert (reconciled["published"], reconciled["dropped"], reconciled["tmp_removed"]) == (0, 2, 1)
    assert records(node_dirs) == []
    with connect(node_dirs) as kubelet:
        for pod in pods:  # kubelet publishes the pods' volumes again
            kubelet.publish(pod, {"url": pushed.reference})
            assert (pod.target / "plugin.wasm").read_bytes() == module
        for pod in pods:
            kubelet.unpublish(pod)
    assert blob_gets(registry, pushed) == 1  # the cache survived the reboot


def test_a_mount_without_record_is_adopted_kept_and_unpublished(
    process: DriverProcess, node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(4 * KIB, "adopt")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    process.start()
    [pod] = publish_pods(node_dirs, pushed, 1)
    assert process.terminate() == 0
    for record in (node_dirs.root / "volumes").glob("*.json"):
        record.unlink()  # lost: the mount is there, the driver does not know it

    process.extra_args = [*process.extra_args, "--cache-max-bytes", "1"]
    process.start()
    [adopted] = log_entries(process, "adopted a mount of ours that had no record")
    assert adopted["target_path"] == str(pod.target)
    assert adopted["volume_id"] == pod.volume_id
    result = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "1")
    assert result.returncode == 0, result.stderr
    assert "freed 0 bytes in 0 module(s)" in result.stdout and "1 in use" in result.stdout
    assert (pod.target / "plugin.wasm").read_bytes() == module
    with connect(node_dirs) as kubelet:
        kubelet.publish(pod, {"url": pushed.reference})  # kubelet's retry: already there
        kubelet.unpublish(pod)
    assert find_mount(pod.target) is None
    assert records(node_dirs) == []
    result = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "1")
    assert f"evicted sha256:{pushed.module_sha256}" in result.stdout


# the tools beside a running driver


def test_gc_command_beside_serve_keeps_what_is_in_use(
    process: DriverProcess, node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    used = push_wasm_artifact(registry, unique_repo, "used", make_module(4 * KIB, "used"))
    unused_module = make_module(4 * KIB, "unused")
    unused = push_wasm_artifact(registry, unique_repo, "unused", unused_module)
    process.start()
    [pod] = publish_pods(node_dirs, used, 1)
    with connect(node_dirs) as kubelet:
        gone = kubelet.new_pod()
        kubelet.publish(gone, {"url": unused.reference})
        kubelet.unpublish(gone)

        dry = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "1", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[0].startswith(f"would evict sha256:{unused.module_sha256}")
        assert (node_dirs.root / "modules" / unused.module_sha256).is_dir()

        result = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "1")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"evicted sha256:{unused.module_sha256}")
        assert "(cache over --cache-max-bytes)" in lines[0]
        assert lines[-1].startswith(f"freed {len(unused_module)} bytes in 1 module(s)")
        assert (pod.target / "plugin.wasm").is_file()

        again = kubelet.new_pod()
        kubelet.publish(again, {"url": unused.reference})  # pulled again
        assert (again.target / "plugin.wasm").read_bytes() == unused_module
        assert blob_gets(registry, unused) == 2


class HeldRecords:
    """Holds the publishes of chosen volumes just before their record is written: the
    module is picked and pinned, nothing on disk names it yet."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, volume_ids: set[str]) -> None:
        self.arrived: set[str] = set()
        self.release = threading.Event()
        self._changed = threading.Condition()
        put = VolumeRecords.put

        def held_put(records: VolumeRecords, record: VolumeRecord) -> None:
            if record.volume_id in volume_ids:
                with self._changed:
                    self.arrived.add(record.volume_id)
                    self._changed.notify_all()
                assert self.release.wait(60)
            put(records, record)

        monkeypatch.setattr(VolumeRecords, "put", held_put)

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.arrived) == count, timeout=30)


def test_gc_command_with_a_zero_budget_never_fails_a_publish_between_pick_and_record(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``csi-wasm gc --cache-max-bytes 0`` while publishes hold pins only in the
    driver's memory: it collects through the driver, so they all mount; the rest goes."""
    modules = [make_module(8 * KIB, f"held-{i}") for i in range(3)]
    pushed = [push_wasm_artifact(registry, unique_repo, f"v{i}", m) for i, m in enumerate(modules)]
    with in_process(node_dirs, settings_with(node_dirs, registry, gc_interval=3600)) as (
        _,
        kubelet,
    ):
        for module in pushed:  # cached, unused: evictable by a 0 byte budget
            pod = kubelet.new_pod()
            kubelet.publish(pod, {"url": module.reference})
            kubelet.unpublish(pod)
        warm = [kubelet.new_pod(name=f"warm-{i}") for i in range(2)]  # modules 0 and 1
        cold = kubelet.new_pod(name="cold")  # module 2 after a pull: evicted first
        held = HeldRecords(monkeypatch, {pod.volume_id for pod in (*warm, cold)})
        gc = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "0")
        assert gc.returncode == 0, gc.stderr
        assert f"evicted sha256:{pushed[2].module_sha256}" in gc.stdout
        with ThreadPoolExecutor(max_workers=3) as pool:
            publishes = [
                pool.submit(kubelet.publish, pod, {"url": pushed[i].reference})
                for i, pod in enumerate((*warm, cold))
            ]
            try:
                held.wait_for(3)
                result = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "0")
                again = cli("gc", "--root", str(node_dirs.root), "--cache-ttl", "0s")
            finally:
                held.release.set()
            for publish in publishes:
                publish.result()  # raises if a publish failed
        assert result.returncode == 0 and again.returncode == 0, result.stderr + again.stderr
        assert result.stdout.splitlines()[-1].startswith("freed 0 bytes in 0 module(s)")
        assert result.stdout.splitlines()[-1].endswith("3 in use")
        for i, pod in enumerate((*warm, cold)):
            assert (pod.target / "plugin.wasm").read_bytes() == modules[i]
            kubelet.unpublish(pod)
        final = cli("gc", "--root", str(node_dirs.root), "--cache-max-bytes", "0")
        assert final.stdout.splitlines()[-1].startswith("freed 24576 bytes in 3 module(s)")


def test_fsck_quarantines_a_corrupted_module_and_the_next_publish_pulls_it(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    module = make_module(8 * KIB, "fsck")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    with in_process(node_dirs, settings_with(node_dirs, registry)) as (_, kubelet):
        running = kubelet.new_pod()
        kubelet.publish(running, {"url": pushed.reference})
        plugin = node_dirs.root / "modules" / pushed.module_sha256 / "plugin.wasm"
        plugin.chmod(0o644)
        with plugin.open("r+b") as handle:  # bit rot
            handle.seek(len(module) // 2)
            handle.write(b"\xde\xad\xbe\xef")

        result = cli("fsck", "--root", str(node_dirs.root))
        assert result.returncode == 1, result.stderr
        assert result.stdout.startswith(f"damaged sha256:{pushed.module_sha256}: its content")
        assert "1 damaged" in result.stdout

        fresh = kubelet.new_pod()
        kubelet.publish(fresh, {"url": pushed.reference})
        assert (fresh.target / "plugin.wasm").read_bytes() == module
        assert blob_gets(registry, pushed) == 2
        assert (running.target / "plugin.wasm").is_file()  # the running pod keeps its mount
        assert cli("fsck", "--root", str(node_dirs.root)).returncode == 0

        kubelet.unpublish(running)
        kubelet.unpublish(fresh)
    quarantine = node_dirs.root / "quarantine"
    assert len(os.listdir(quarantine)) == 1
    with in_process(node_dirs, settings_with(node_dirs, registry)) as (driver, _):
        driver.collector.collect()  # nothing mounts it any more
        assert os.listdir(quarantine) == []


def test_a_publish_that_must_make_room_completes_while_fsck_hashes(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    """fsck holds no lock while it hashes: a cold publish over the cache budget evicts
    (under the lock) and mounts while fsck is held in the middle of reading a module."""
    first, second = (make_module(16 * KIB, f"fsck-room-{i}") for i in range(2))
    pushed = [
        push_wasm_artifact(registry, unique_repo, f"v{i}", m) for i, m in enumerate((first, second))
    ]
    settings = settings_with(node_dirs, registry, max_bytes=24 * KIB, gc_interval=3600)
    with in_process(node_dirs, settings) as (_, kubelet):
        gone = kubelet.new_pod()
        kubelet.publish(gone, {"url": pushed[0].reference})
        kubelet.unpublish(gone)
        hashing, release = threading.Event(), threading.Event()

        def gate(_name: str) -> None:
            hashing.set()
            assert release.wait(60)

        fsck = ThreadPoolExecutor(max_workers=1)
        checked = fsck.submit(check_store, ModuleStore(node_dirs.root), hashing=gate)
        try:
            assert hashing.wait(10)
            pod = kubelet.new_pod()
            kubelet.publish(pod, {"url": pushed[1].reference}, timeout=30)
            assert (pod.target / "plugin.wasm").read_bytes() == second
            assert not (node_dirs.root / "modules" / pushed[0].module_sha256).exists()
            assert not checked.done()  # fsck was still hashing the whole time
        finally:
            release.set()
            fsck.shutdown()
        assert checked.result().damaged == ()
        kubelet.unpublish(pod)


# a full disk


@pytest.fixture
def small_root(node_dirs: NodeDirs) -> NodeDirs:
    """The driver's root on a 256 KiB tmpfs (unmounted with the node's other mounts)."""
    node_dirs.root.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(node_dirs.root)], check=True
    )
    return node_dirs


def test_a_full_disk_evicts_unused_modules_and_is_exhausted_only_when_nothing_can_go(
    small_root: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    first, second, third = (make_module(125 * KIB, f"disk-{i}") for i in range(3))
    pushed = [
        push_wasm_artifact(registry, unique_repo, f"v{i}", m)
        for i, m in enumerate((first, second, third))
    ]
    with in_process(small_root, settings_with(small_root, registry)) as (driver, kubelet):
        old = kubelet.new_pod()
        kubelet.publish(old, {"url": pushed[0].reference})
        kubelet.unpublish(old)  # cached, unused

        pod = kubelet.new_pod()
        kubelet.publish(pod, {"url": pushed[1].reference})  # no room until the first goes
        assert (pod.target / "plugin.wasm").read_bytes() == second
        assert not (small_root.root / "modules" / pushed[0].module_sha256).exists()
        disk = driver.metrics.registry.get_sample_value(
            "csi_wasm_gc_evictions_total", {"reason": "disk"}
        )
        assert disk == 1.0

        code, message = rpc_error(
            lambda: kubelet.publish(kubelet.new_pod(), {"url": pushed[2].reference})
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "disk is full" in message and "no unused module can be evicted" in message
        assert (pod.target / "plugin.wasm").read_bytes() == second  # in use: never evicted


# prefetch pins


def test_a_prefetched_module_is_kept_while_listed_and_evictable_once_unlisted(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(4 * KIB, "listed"))
    settings = settings_with(node_dirs, registry, max_bytes=1, gc_interval=3600)
    module_dir = node_dirs.root / "modules" / pushed.module_sha256
    with in_process(node_dirs, settings) as (driver, _):
        driver.prefetcher.set_dynamic([PrefetchEntry(pushed.reference)])
        wait_for(
            lambda: driver.prefetcher.pinned() == {pushed.module_sha256},
            what="the module to be prefetched",
        )
        for _ in range(3):  # the fetch's pin is handed over to the listing, not leaked
            driver.collector.collect()
            assert module_dir.is_dir()
        driver.prefetcher.set_dynamic([])
        driver.collector.collect()
        assert not module_dir.exists()
