"""NodePublishVolume and NodeUnpublishVolume, without gRPC.

Publish is a straight line with one rollback: lock the volume, validate, get the
module (cache or pull), record the volume, bind-mount read-only, check the mount.
Any failure after the record is written undoes the mount and the record.

It runs on the server's event loop in three steps: start (validate, look in the cache
or join the pull) and finish (record, mount) are blocking and run on a worker thread;
waiting for a pull in between is an ``await`` that holds no thread, so hundreds of
pods can wait for one download while everything else is answered. A module already in
the cache needs no wait: start and finish then run as one step.

The module comes back pinned (garbage collection cannot evict it); the pin is
released once the volume record names it, or on failure. Unpublish marks the module
used now, so its time unused starts when its last volume goes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from csi_wasm import attributes
from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords
from csi_wasm.errors import (
    Aborted,
    AlreadyExists,
    CsiWasmError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    SignatureRejected,
    Unavailable,
)
from csi_wasm.faults import disk_faults
from csi_wasm.kube.events import (
    REASON_FAILED_PULL,
    REASON_INVALID_MODULE,
    REASON_SIGNATURE_FAILED,
    EventRecorder,
    NullRecorder,
)
from csi_wasm.locks import VolumeLocks
from csi_wasm.mounts import READ_ONLY_OPTIONS, MountEntry
from csi_wasm.puller import Lookup, PulledModule
from csi_wasm.registry import Keychain
from csi_wasm.workers import Workers


class Mounter(Protocol):
    def bind_read_only(self, source: Path, target: Path) -> None: ...
    def unmount(self, target: Path) -> None: ...
    def find_mount(self, target: Path) -> MountEntry | None: ...
    def shows_read_only(self, source: Path, target: Path) -> bool: ...


class ModuleSource(Protocol):
    """Where modules come from (:class:`csi_wasm.puller.Puller`), in three steps so that
    waiting for a download holds no thread: find (local), ready (awaits the network),
    collect (local)."""

    def find(self, request: attributes.ModuleRequest, keychain: Keychain | None) -> Lookup: ...

    async def ready(self, lookup: Lookup, wait: float, work: Workers) -> None: ...

    def collect(self, lookup: Lookup) -> PulledModule:
        """The module, pinned until :meth:`release`."""

    def abandon(self, lookup: Lookup) -> None: ...

    def release(self, module: PulledModule) -> None: ...

    def unused(self, module_digest: str) -> None:
        """A volume of this module was unpublished."""


@dataclass(frozen=True)
class PublishRequest:
    volume_id: str
    target_path: str
    block: bool  # the requested access type is block, not mount
    volume_context: Mapping[str, str]
    secrets: Mapping[str, str]


@dataclass(frozen=True)
class _Prepared:
    """A publish between its steps: the record it will write, where, and its module lookup."""

    wanted: VolumeRecord  # without the module digest, known once collected
    target: Path
    lookup: Lookup


@dataclass(frozen=True)
class PublishResult:
    module_digest: str
    module_size: int
    from_cache: bool
    already_published: bool
    warning: str | None = None  # a signature check failed under a warn rule
    catalog: str | None = None  # a catalog volume: no module of its own


class NodeService:
    def __init__(
        self,
        pods_dir: Path,
        modules: ModuleSource,
        records: VolumeRecords,
        mounter: Mounter,
        events: EventRecorder | None = None,
        catalogs: Mapping[str, Path] | None = None,
    ) -> None:
        self._pods_dir = pods_dir.resolve()
        self._catalogs = dict(catalogs or {})  # name -> the directory a catalog volume shows
        self._events = events or NullRecorder()
        self._modules = modules
        self._records = records
        self._mounter = mounter
        self._locks = VolumeLocks()

    def publish(self, request: PublishRequest, wait: float) -> PublishResult:
        """:meth:`publish_async` for a caller with a thread to spare (and no event loop)."""
        return asyncio.run(self.publish_async(request, wait, Workers.inline()))

    async def publish_async(
        self, request: PublishRequest, wait: float, work: Workers
    ) -> PublishResult:
        """Publish, and tell the pod's Events what happened (best effort, never blocking)."""
        started = time.monotonic()
        pod = attributes.pod_info(request.volume_context)
        try:
            with disk_faults():  # the root's faults are named, never INTERNAL
                result = await self._publish(request, wait, work)
        except CsiWasmError as error:
            if not isinstance(error, Aborted):  # kubelet's overlap, not the pod's problem
                self._events.failed(pod, _event_reason(error), error.message)
            raise
        if result.warning:
            self._events.failed(pod, REASON_SIGNATURE_FAILED, result.warning)
        if not result.already_published and result.catalog is None:
            url = request.volume_context.get(attributes.URL, "")
            self._events.pulled(
                pod,
                url,
                result.module_digest,
                result.module_size,
                time.monotonic() - started,
                result.from_cache,
            )
        return result

    async def _publish(self, request: PublishRequest, wait: float, work: Workers) -> PublishResult:
        """Start on a worker, wait for the module holding no thread, finish on a worker.

        The volume stays locked throughout, so kubelet's overlapping retry is ABORTED.
        """
        volume_id = _require(request.volume_id, "volume_id")
        with self._locks.hold(volume_id):
            prepared = await work.local.run(self._start, volume_id, request)
            if isinstance(prepared, PublishResult):
                return prepared  # already published, or the module was in the cache
            try:
                await self._modules.ready(prepared.lookup, wait, work)
            except BaseException:
                await work.local.run(self._modules.abandon, prepared.lookup)
                raise
            return await work.local.run(self._finish, prepared)

    def _start(self, volume_id: str, request: PublishRequest) -> _Prepared | PublishResult:
        """Validate; then find the volume already published, or publish it from the cache,
        or return what it waits for."""
        target = self._confine(request.target_path)
        if request.block:
            raise InvalidArgument(
                "block volumes are not supported: a Wasm module is mounted as a directory; "
                "use a mount (filesystem) volume"
            )
        pod = str(attributes.pod_info(request.volume_context))
        catalog = attributes.parse_catalog(request.volume_context)
        if catalog is not None:
            return self._publish_catalog(volume_id, target, catalog, pod)
        module_request = attributes.parse_attributes(request.volume_context)
        wanted = VolumeRecord(
            volume_id=volume_id,
            target_path=os.fspath(target),
            url=request.volume_context[attributes.URL],
            sha256=module_request.sha256,
            module="",
            pod=pod,
        )
        existing = self._republished(wanted, target, lambda e: f"with url {e.url!r}")
        if existing is not None:
            return PublishResult(existing.module, 0, True, already_published=True)
        keychain = Keychain.from_secrets(request.secrets)
        prepared = _Prepared(wanted, target, self._modules.find(module_request, keychain))
        if prepared.lookup.waits:
            return prepared
        # Nothing to wait for: finish in this same step (a warm publish: one thread hop).
        return self._finish(prepared)

    def _finish(self, prepared: _Prepared) -> PublishResult:
        """Take the module (pinned), record the volume and mount it; the record holds it then."""
        module = self._modules.collect(prepared.lookup)
        try:
            record = VolumeRecord(**{**prepared.wanted.__dict__, "module": module.digest})
            self._mount(record, module.path, prepared.target)
        finally:
            self._modules.release(module)  # the record (or nothing) holds it now
        return PublishResult(module.digest, module.size, module.from_cache, False, module.warning)

    def _publish_catalog(
        self, volume_id: str, target: Path, catalog: str, pod: str
    ) -> PublishResult:
        """Bind the catalog's directory at once: what it holds now, updated in place later.

        Done in the prepare step (the volume is locked): no registry is asked and nothing
        is waited for, so a pod's start never depends on a registry (CONTRACT.md §10).
        """
        source = self._catalogs.get(catalog)
        if source is None:
            raise FailedPrecondition(f"catalog {catalog!r} is not served by this driver")
        wanted = VolumeRecord(volume_id, os.fspath(target), "", None, "", pod, catalog=catalog)
        if self._republished(wanted, target, lambda _: "as another volume") is not None:
            return PublishResult("", 0, True, already_published=True, catalog=catalog)
        self._mount(wanted, source, target)
        return PublishResult("", 0, True, already_published=False, catalog=catalog)

    def _republished(
        self, wanted: VolumeRecord, target: Path, otherwise: Callable[[VolumeRecord], str]
    ) -> VolumeRecord | None:
        """The volume's record when this publish repeats one done and mounted (CSI wants
        success then); AlreadyExists, saying ``otherwise(record)``, when it was published
        differently."""
        existing = self._records.get(wanted.volume_id)
        if existing is None:
            return None
        if not existing.matches(wanted):
            raise AlreadyExists(
                f"volume {wanted.volume_id} is already published at {existing.target_path} "
                f"{otherwise(existing)}; unpublish it first"
            )
        return existing if _is_read_only(self._mounter.find_mount(target)) else None

    def unpublish(self, volume_id: str, target_path: str) -> None:
        volume_id = _require(volume_id, "volume_id")
        target = self._confine(target_path)
        with disk_faults(), self._locks.hold(volume_id):
            existing = self._records.get(volume_id)
            self._mounter.unmount(target)
            _remove_target(target)
            self._records.delete(volume_id)
            if existing is not None and existing.module:
                self._modules.unused(existing.module)

    def _mount(self, record: VolumeRecord, source: Path, target: Path) -> None:
        self._records.put(record)  # first: after a crash, unpublish still finds it
        try:
            try:
                target.mkdir(mode=0o750)
            except FileNotFoundError:
                raise InvalidArgument(
                    f"the parent of target path {target} does not exist; kubelet creates it"
                ) from None
            except FileExistsError:
                # Left by an earlier attempt: a mount there is stale (no record of ours).
                if self._mounter.find_mount(target) is not None:
                    self._mounter.unmount(target)
            try:
                self._mounter.bind_read_only(source, target)
            except FileNotFoundError:
                if source.exists():
                    raise
                raise Unavailable(
                    f"module sha256:{record.module} was removed from the cache while being "
                    "published (csi-wasm gc or fsck running?); kubelet's retry will fetch it again"
                ) from None
            self._verify(source, target)
        except BaseException:
            self._mounter.unmount(target)
            _remove_target(target)
            self._records.delete(record.volume_id)
            raise

    def _verify(self, source: Path, target: Path) -> None:
        if not self._mounter.shows_read_only(source, target):
            raise Internal(f"the mount at {target} is not a read-only bind of {source}")

    def _confine(self, target_path: str) -> Path:
        """The target as an absolute path below ``<kubelet-dir>/pods``, or INVALID_ARGUMENT."""
        _require(target_path, "target_path")
        path = Path(target_path)
        if "\0" in target_path or not path.is_absolute() or path.name in ("", ".", ".."):
            raise InvalidArgument(f"target_path {target_path[:300]!r} is not an absolute path")
        parent = path.parent.resolve()
        if parent == self._pods_dir or not parent.is_relative_to(self._pods_dir):
            raise InvalidArgument(
                f"target_path {target_path[:300]!r} is not under {self._pods_dir}; "
                "csi-wasm only mounts into kubelet's pod directories (check --kubelet-dir)"
            )
        target = parent / path.name
        if target.is_symlink():
            # mount(2) and umount(2) follow a link in the last component: refuse it.
            raise InvalidArgument(
                f"target_path {target_path[:300]!r} is a symbolic link; kubelet never makes one"
            )
        return target


def _event_reason(error: CsiWasmError) -> str:
    """The module itself is wrong (InvalidModule), or getting it failed (FailedPull)."""
    if isinstance(error, SignatureRejected):
        return REASON_SIGNATURE_FAILED
    if error.code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS"):
        return REASON_INVALID_MODULE
    return REASON_FAILED_PULL


def _require(value: str, name: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    return value


def _is_read_only(entry: MountEntry | None) -> bool:
    return entry is not None and entry.options >= READ_ONLY_OPTIONS


def _remove_target(target: Path) -> None:
    try:
        target.rmdir()
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise FailedPrecondition(
            f"target path {target} is a file, not a csi-wasm mount; remove it by hand"
        ) from None
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
        raise FailedPrecondition(
            f"target path {target} is not empty and not mounted; csi-wasm leaves it alone"
        ) from None
