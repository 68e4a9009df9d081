"""Tests of csi_wasm.cache.reconcile: records agree with the mount table before serving."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from support.driver import NodeDirs
from support.kubelet import PodVolume
from support.wasm import make_module

from csi_wasm.cache.reconcile import kubelet_volume_id, reconcile
from csi_wasm.cache.store import ModuleStore
from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords
from csi_wasm.catalog.directory import catalog_dir
from csi_wasm.mounts import bind_read_only, find_mount, unmount


@pytest.fixture
def store(node_dirs: NodeDirs) -> ModuleStore:
    s = ModuleStore(node_dirs.root)
    s.prepare()
    return s


@pytest.fixture
def records(node_dirs: NodeDirs) -> VolumeRecords:
    r = VolumeRecords(node_dirs.root / "volumes")
    r.prepare()
    return r


def add_module(store: ModuleStore, seed: str) -> str:
    data = make_module(2000, seed)
    module_hex = hashlib.sha256(data).hexdigest()
    with store.temp_file() as (path, fd):
        os.write(fd, data)
        store.commit_module(path, module_hex)
    return module_hex


def new_pod(dirs: NodeDirs, volume: str = "wasm") -> PodVolume:
    uid = str(uuid.uuid4())
    parent = dirs.kubelet_dir / "pods" / uid / "volumes" / "kubernetes.io~csi" / volume
    parent.mkdir(parents=True)
    return PodVolume("app", "default", uid, volume, parent / "mount")


def publish(store: ModuleStore, records: VolumeRecords, pod: PodVolume, module_hex: str) -> None:
    """What NodePublishVolume leaves behind: a record and a read-only bind mount."""
    records.put(
        VolumeRecord(pod.volume_id, str(pod.target), "r.io/m:v1", None, module_hex, "default/app")
    )
    pod.target.mkdir()
    bind_read_only(store.module_dir(module_hex), pod.target)


def test_kubelet_volume_id_matches_kubelets(node_dirs: NodeDirs) -> None:
    pod = new_pod(node_dirs, "my-volume")
    pods = node_dirs.kubelet_dir / "pods"
    assert kubelet_volume_id(pods, str(pod.target)) == (pod.volume_id, pod.pod_uid)
    assert kubelet_volume_id(pods, str(pods / "uid" / "volumes" / "x" / "v" / "mount")) is None
    assert kubelet_volume_id(pods, str(pods / "uid" / "mount")) is None
    assert kubelet_volume_id(pods, "/elsewhere/mount") is None


def test_mounted_records_stay_unmounted_ones_go(
    node_dirs: NodeDirs, store: ModuleStore, records: VolumeRecords
) -> None:
    module_hex = add_module(store, "m")
    kept, rebooted = new_pod(node_dirs), new_pod(node_dirs)
    publish(store, records, kept, module_hex)
    publish(store, records, rebooted, module_hex)
    unmount(rebooted.target)  # the reboot (or a human)
    os.utime(store.module_dir(module_hex), (1_000_000, 1_000_000))  # published long ago

    report = reconcile(store, records, node_dirs.kubelet_dir / "pods")

    assert [r.volume_id for r in report.dropped] == [rebooted.volume_id]
    assert records.get(rebooted.volume_id) is None
    assert records.get(kept.volume_id) is not None
    assert report.records == 1
    assert report.adopted == () and report.unknown_mounts == ()
    # used until the reboot: its time unused starts now, not at that old publish
    assert store.module_dir(module_hex).stat().st_mtime > 1_000_000


def test_a_mount_of_ours_without_record_is_adopted(
    node_dirs: NodeDirs, store: ModuleStore, records: VolumeRecords
) -> None:
    module_hex = add_module(store, "adopt")
    pod = new_pod(node_dirs)
    publish(store, records, pod, module_hex)
    records.delete(pod.volume_id)  # lost

    report = reconcile(store, records, node_dirs.kubelet_dir / "pods")

    [adopted] = report.adopted
    assert records.get(pod.volume_id) == adopted
    assert (adopted.target_path, adopted.module, adopted.adopted) == (
        str(pod.target),
        module_hex,
        True,
    )
    assert adopted.url == ""
    # a request for that volume at that target matches the adopted record
    wanted = VolumeRecord(pod.volume_id, str(pod.target), "r.io/m:v1", None, "", "default/app")
    assert adopted.matches(wanted)
    assert not adopted.matches(VolumeRecord(pod.volume_id, "/other", "", None, "", ""))
    assert reconcile(store, records, node_dirs.kubelet_dir / "pods").adopted == ()


def test_a_mount_outside_kubelets_layout_is_only_reported(
    node_dirs: NodeDirs, store: ModuleStore, records: VolumeRecords
) -> None:
    module_hex = add_module(store, "odd")
    odd = node_dirs.kubelet_dir / "pods" / "odd-place"
    odd.mkdir()
    bind_read_only(store.module_dir(module_hex), odd)
    foreign = node_dirs.kubelet_dir / "pods" / "not-ours"
    foreign.mkdir()
    bind_read_only(node_dirs.kubelet_dir, foreign)  # some other mount: ignored

    report = reconcile(store, records, node_dirs.kubelet_dir / "pods")

    assert report.unknown_mounts == (str(odd),)
    assert records.all() == []
    assert find_mount(odd) is not None  # left alone


def test_leftovers_and_dangling_index_entries_are_removed(
    node_dirs: NodeDirs, store: ModuleStore, records: VolumeRecords
) -> None:
    module_hex = add_module(store, "kept")
    store.record_manifest("sha256:" + "0e" * 32, module_hex)
    store.record_manifest("sha256:" + "0f" * 32, "01" * 32)
    (store.tmp_dir / "pull-interrupted").write_bytes(b"\0asm")

    report = reconcile(store, records, node_dirs.kubelet_dir / "pods")

    assert (report.tmp_removed, report.index_pruned) == (1, 1)
    assert os.listdir(store.tmp_dir) == []
    assert store.module_for_manifest("sha256:" + "0e" * 32) == module_hex


def test_prepares_a_fresh_root(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path / "root")
    records = VolumeRecords(tmp_path / "root" / "volumes")
    report = reconcile(store, records, tmp_path / "kubelet" / "pods")
    assert report.records == 0
    assert store.usable() and records.directory.is_dir()


def test_a_catalog_mount_without_record_is_adopted_as_a_catalog_volume(
    node_dirs: NodeDirs, store: ModuleStore, records: VolumeRecords
) -> None:
    directory = catalog_dir(node_dirs.root)
    directory.mkdir(parents=True)
    pod = new_pod(node_dirs)
    pod.target.mkdir()
    bind_read_only(directory, pod.target)

    report = reconcile(store, records, node_dirs.kubelet_dir / "pods")

    [adopted] = report.adopted
    assert (adopted.volume_id, adopted.module, adopted.catalog, adopted.adopted) == (
        pod.volume_id,
        "",
        "node",
        True,
    )
    assert records.modules() == set()  # GC keeps nothing for it: the catalog pins its own
