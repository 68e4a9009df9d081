"""Start-up reconciliation: make the driver's files agree with the node before serving.

The driver may have been upgraded under running pods, killed, or the node rebooted
(which removes every mount but keeps ``--root``). Before the socket opens:

* temp files of interrupted pulls are removed (``tmp/``);
* a volume record whose target is no longer mounted is dropped (a reboot, or someone
  unmounted it): nothing shows that volume, kubelet publishes it again if the pod
  still runs. Its module counts as used until now (garbage collection's time unused
  starts here, not at the last publish before the reboot);
* a mount under ``<kubelet-dir>/pods`` that shows one of our modules but has no record
  (e.g. a crash between the mount and a record rewrite, or records lost with a
  rebuilt ``--root`` whose modules were kept) is *adopted*: a record is written
  with what the mount tells (target, module digest; the url is unknown), so a later
  NodeUnpublishVolume, and garbage collection, see it (a mount of a catalog's
  directory is adopted as a catalog volume). The volume id is kubelet's
  for inline volumes, ``csi-<sha256(pod uid + volume name)>``, read off the target
  path; a mount whose path does not follow kubelet's layout is only reported;
* index entries that lead to no stored module are dropped.

Everything is decided from one read of the mount table (not one lookup per volume):
a node with a thousand published volumes starts in milliseconds, not seconds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from csi_wasm.cache.store import ModuleStore, is_sha256_hex
from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords
from csi_wasm.catalog.directory import catalog_dir
from csi_wasm.mounts import MOUNTINFO, MountEntry, MountTable, SourcePath

log = logging.getLogger(__name__)

_INLINE_VOLUMES = "kubernetes.io~csi"


@dataclass(frozen=True)
class ReconcileReport:
    records: int  # records kept (published volumes, adopted ones included)
    dropped: tuple[VolumeRecord, ...]
    adopted: tuple[VolumeRecord, ...]
    unknown_mounts: tuple[str, ...]  # mounts of our modules that could not be adopted
    tmp_removed: int
    index_pruned: int
    seconds: float


def kubelet_volume_id(pods_dir: Path, target: str) -> tuple[str, str] | None:
    """(volume id, pod uid) kubelet uses for the inline CSI volume mounted at ``target``.

    ``<pods>/<uid>/volumes/kubernetes.io~csi/<volume>/mount`` is kubelet's layout; the
    id is ``csi-`` and the sha256 of the pod uid followed by the volume name.
    """
    try:
        parts = Path(target).relative_to(pods_dir).parts
    except ValueError:
        return None
    if len(parts) != 5 or parts[1:3] != ("volumes", _INLINE_VOLUMES) or parts[4] != "mount":
        return None
    uid, volume = parts[0], parts[3]
    return "csi-" + hashlib.sha256((uid + volume).encode()).hexdigest(), uid


def reconcile(
    store: ModuleStore,
    records: VolumeRecords,
    pods_dir: Path,
    *,
    mountinfo: Path = MOUNTINFO,
) -> ReconcileReport:
    started = time.monotonic()
    tmp_removed = store.prepare()
    records.prepare()
    pods_dir = pods_dir.resolve()
    table = MountTable.read(mountinfo)

    dropped = []
    kept: set[str] = set()
    for record in records.all():
        if table.at(record.target_path) is None:
            records.delete(record.volume_id)
            dropped.append(record)
        else:
            kept.add(record.target_path)
    for module in {record.module for record in dropped if record.module}:
        store.touch(module)  # used until the mount went: its time unused starts now

    ours = [
        source
        for source in (
            table.source_of(directory)
            for directory in (store.modules_dir, store.trash_dir, store.quarantine_dir)
        )
        if source is not None
    ]
    catalogs = table.source_of(catalog_dir(store.root).parent)
    adopted: list[VolumeRecord] = []
    unknown: list[str] = []
    for entry in table.under(pods_dir):
        if entry.mount_point in kept or table.at(entry.mount_point) is not entry:
            continue  # recorded, or covered by another mount
        digest = _our_module(entry, ours)
        catalog = catalogs.child(entry) if catalogs is not None and digest is None else None
        if digest is None and catalog is None:
            continue  # not ours
        adoption = _adoption(records, pods_dir, entry.mount_point, digest or "", catalog)
        if adoption is None:
            unknown.append(entry.mount_point)
            continue
        records.put(adoption)
        kept.add(entry.mount_point)
        adopted.append(adoption)

    report = ReconcileReport(
        records=len(kept),
        dropped=tuple(dropped),
        adopted=tuple(adopted),
        unknown_mounts=tuple(unknown),
        tmp_removed=tmp_removed,
        index_pruned=store.prune_index(),
        seconds=time.monotonic() - started,
    )
    _log(report)
    return report


def _our_module(entry: MountEntry, ours: list[SourcePath]) -> str | None:
    for source in ours:
        name = source.child(entry)
        if name is not None:
            digest = name.split(".", 1)[0]  # trash and quarantine names carry a suffix
            return digest if is_sha256_hex(digest) else None
    return None


def _adoption(
    records: VolumeRecords, pods_dir: Path, target: str, digest: str, catalog: str | None
) -> VolumeRecord | None:
    identified = kubelet_volume_id(pods_dir, target)
    if identified is None:
        return None
    volume_id, uid = identified
    if records.get(volume_id) is not None:
        return None  # the id is taken by a record for another target: leave both alone
    return VolumeRecord(
        volume_id=volume_id,
        target_path=target,
        url="",
        sha256=None,
        module=digest,
        pod=f"uid:{uid}",
        adopted=True,
        catalog=catalog,
    )


_LOGGED_EACH = 20  # mounts adopted or unknown logged one by one; beyond that, counted


def _log(report: ReconcileReport) -> None:
    for record in report.adopted[:_LOGGED_EACH]:
        log.warning(
            "adopted a mount of ours that had no record",
            extra={
                "fields": {
                    "target_path": record.target_path,
                    "volume_id": record.volume_id,
                    "digest": f"sha256:{record.module}" if record.module else None,
                    "catalog": record.catalog,
                }
            },
        )
    for target in report.unknown_mounts[:_LOGGED_EACH]:
        log.warning(
            "a mount of one of our modules has no record and is not where kubelet puts "
            "inline volumes; left alone (garbage collection keeps its module)",
            extra={"fields": {"target_path": target}},
        )
    for record in report.dropped:
        log.debug(
            "dropped the record of a volume no longer mounted",
            extra={"fields": {"target_path": record.target_path, "volume_id": record.volume_id}},
        )
    log.info(
        "reconciled published volumes with the mount table",
        extra={
            "fields": {
                "published": report.records,
                "dropped": len(report.dropped),
                "adopted": len(report.adopted),
                "unknown_mounts": len(report.unknown_mounts),
                "tmp_removed": report.tmp_removed,
                "index_pruned": report.index_pruned,
                "duration_ms": round(report.seconds * 1000, 1),
            }
        },
    )
