"""Records of published volumes, one small JSON file each under ``<root>/volumes``.

A record is written (atomically) before the mount and removed after the unmount, so
after a restart the driver still knows which module each target shows, and
NodeUnpublishVolume keeps working. Records hold no secrets.

Records are renamed into place but not fsynced: they must survive the driver's
crash, which a rename does, but not the kernel's. A power loss or reboot also
removes every mount they describe, and start-up drops records without a mount.
That keeps fsync (milliseconds) off the warm publish path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from csi_wasm.atomic import remove, write_atomic


@dataclass(frozen=True)
class VolumeRecord:
    volume_id: str
    target_path: str
    url: str  # the url attribute as the pod gave it
    sha256: str | None  # the sha256 attribute, if any
    module: str  # sha256 hex of the published plugin.wasm
    pod: str  # namespace/name, for logs and events
    # Written at start-up for a mount of ours found without a record: the url is not
    # known (see csi_wasm.cache.reconcile).
    adopted: bool = False
    # A catalog volume (``catalog: node``) shows a catalog's directory, not one module
    # (``module`` is empty): see csi_wasm.catalog.
    catalog: str | None = None

    def same_request(self, other: VolumeRecord) -> bool:
        """True when ``other`` asks for the same thing at the same place."""
        return (self.target_path, self.url, self.sha256, self.catalog) == (
            other.target_path,
            other.url,
            other.sha256,
            other.catalog,
        )

    def matches(self, request: VolumeRecord) -> bool:
        """True when ``request`` may be answered by this record's volume.

        An adopted record does not know its url, so any request at its target matches.
        """
        if self.adopted:
            return self.target_path == request.target_path
        return self.same_request(request)


class VolumeRecords:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, volume_id: str) -> Path:
        # Hashed: a volume id is caller-controlled text, not a safe file name.
        return self.directory / (hashlib.sha256(volume_id.encode()).hexdigest() + ".json")

    def get(self, volume_id: str) -> VolumeRecord | None:
        try:
            record = _load(self._path(volume_id))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # A damaged record must not wedge the volume: treat it as unknown, and the
            # publish or unpublish that follows rewrites or removes it.
            return None
        return record if record.volume_id == volume_id else None

    def put(self, record: VolumeRecord) -> None:
        data = json.dumps(asdict(record)).encode()
        write_atomic(self._path(record.volume_id), data, durable=False)

    def delete(self, volume_id: str) -> None:
        remove(self._path(volume_id), durable=False)

    def count(self) -> int:
        """How many volumes are published (cheap: no record is read)."""
        with os.scandir(self.directory) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".json"))

    def all(self) -> list[VolumeRecord]:
        records = []
        try:
            with os.scandir(self.directory) as entries:
                names = sorted(entry.name for entry in entries if entry.name.endswith(".json"))
        except FileNotFoundError:
            return []  # never prepared: nothing was published
        for name in names:
            try:
                records.append(_load(self.directory / name))
            except (OSError, ValueError, TypeError):
                continue  # removed meanwhile, or damaged: not a published volume we know
        return records

    def modules(self) -> set[str]:
        """Digests of every module a published volume shows (what GC must keep)."""
        return {record.module for record in self.all() if record.module}


def _load(path: Path) -> VolumeRecord:
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise TypeError("a volume record is a JSON object")
    return VolumeRecord(**data)
