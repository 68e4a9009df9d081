"""Garbage collection of the module cache: evict unused modules, least recently used first.

A module is *in use*, and never evicted, while any of these holds it:

* a volume record names it (a pod shows it);
* it is pinned in memory (a publish picked it and has not written its record yet; see
  :mod:`csi_wasm.cache.store`), or was pinned at any time during this collection.
  ``csi-wasm gc`` beside a running ``serve`` has the driver collect, so these pins
  count for it too (:mod:`csi_wasm.cache.gc_requests`);
* a pin source lists it (``add_pin_source``: the prefetch list);
* a bind mount shows it (read from mountinfo: a mount without a record, e.g. one
  still being adopted, is in use all the same).

Among the others, oldest last use first, a module is evicted when it has been unused
for longer than ``ttl``, or while the cache holds more than ``max_bytes`` (plus what
a pull is about to add), or while the disk has less free space than a pull needs.

Eviction is two steps. Under the store's lock (the one pins take) the victims are
renamed from ``modules/`` into ``trash/``: they vanish atomically for every lookup,
and a later pin misses them. Outside the lock, the volume records and the mount table
are read again; a victim that another process started to publish meanwhile is put
back, any other one is deleted. A bind mount holds the directory itself, so the
contents of a module that any mount shows are never deleted, even if it reached the
trash. Index entries that led to an evicted module are dropped (they already read as
cache misses).

Collections are serialised across processes by ``<root>/.lock`` (flock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from csi_wasm.cache import gc_requests
from csi_wasm.cache.store import CachedModule, ModuleStore, is_sha256_hex
from csi_wasm.cache.volumes import VolumeRecords
from csi_wasm.catalog.directory import catalog_dir, held_digests
from csi_wasm.faults import FaultLog
from csi_wasm.mounts import MOUNTINFO, MountTable
from csi_wasm.puller import PulledModule
from csi_wasm.settings import CacheSettings

log = logging.getLogger(__name__)

PinSource = Callable[[], Iterable[str]]

REASON_TTL = "ttl"  # unused for longer than --cache-ttl
REASON_SIZE = "size"  # the cache held more than --cache-max-bytes
REASON_DISK = "disk"  # a pull needed free disk space


@dataclass(frozen=True)
class Eviction:
    digest: str  # sha256 hex
    size: int
    last_used: float  # unix time
    reason: str  # REASON_*
    disk_bytes: int = 0


@dataclass(frozen=True)
class GcReport:
    evicted: tuple[Eviction, ...]
    in_use: int  # modules kept because something uses them
    cache_bytes: int  # after the collection (or as it would be, for a dry run)
    cache_modules: int
    dry_run: bool = False
    put_back: tuple[str, ...] = ()  # victims another process started to use meanwhile

    @property
    def freed_bytes(self) -> int:
        return sum(e.size for e in self.evicted)


class GcObserver(Protocol):
    def module_evicted(self, reason: str, size: int) -> None: ...


def choose_victims(
    modules: Sequence[CachedModule],
    in_use: set[str],
    *,
    max_bytes: int,
    ttl: float,
    now: float,
    incoming: int = 0,
    disk_free: int | None = None,
    disk_needed: int = 0,
) -> list[Eviction]:
    """The modules to evict, oldest last use first (pure: no file is touched)."""
    total = sum(m.size for m in modules)
    victims = []
    for module in sorted(modules, key=lambda m: (m.last_used, m.digest)):
        if module.digest in in_use:
            continue
        if now - module.last_used > ttl:
            reason = REASON_TTL
        elif total + incoming > max_bytes:
            reason = REASON_SIZE
        elif disk_free is not None and disk_free < disk_needed:
            reason = REASON_DISK
        else:
            break  # every later module was used more recently: nothing else is due
        victims.append(
            Eviction(module.digest, module.size, module.last_used, reason, module.disk_bytes)
        )
        total -= module.size
        if disk_free is not None:
            disk_free += module.disk_bytes
    return victims


@dataclass
class _Protected:
    """What a collection must not evict, read outside the store's lock."""

    records: set[str]
    mounted: set[str]
    pinned_elsewhere: set[str]

    def all(self) -> set[str]:
        return self.records | self.mounted | self.pinned_elsewhere


class CacheCollector:
    """Evicts unused modules; see the module docstring for the rules."""

    def __init__(
        self,
        store: ModuleStore,
        records: VolumeRecords,
        settings: CacheSettings,
        *,
        clock: Callable[[], float] = time.time,
        mountinfo: Path = MOUNTINFO,
        observer: GcObserver | None = None,
    ) -> None:
        self._store = store
        self._records = records
        self._settings = settings
        self._clock = clock
        self._mountinfo = mountinfo
        self._observer = observer
        self._pin_sources: list[PinSource] = []

    def add_pin_source(self, source: PinSource) -> None:
        """Never evict the module digests ``source()`` returns (hex, or ``sha256:hex``).

        Called once per collection, outside any lock of ours; it must be quick and
        must not call back into the store.
        """
        self._pin_sources.append(source)

    def requested(self, settings: CacheSettings, dry_run: bool) -> dict[str, Any]:
        """A collection ``csi-wasm gc`` asked for: its budget, our pins and pin sources.

        Returns the report as JSON data (see :mod:`csi_wasm.cache.gc_requests`).
        """
        other = CacheCollector(
            self._store,
            self._records,
            settings,
            clock=self._clock,
            mountinfo=self._mountinfo,
            observer=self._observer,
        )
        other._pin_sources = self._pin_sources  # the same list: sources added later count
        report = other.collect(dry_run=dry_run)
        log_report(report)
        return dataclasses.asdict(report)

    # what the puller needs (csi_wasm.puller.CacheSpace)

    def reserve(self, incoming: int) -> None:
        """Before a commit: evict unused modules until ``incoming`` more bytes fit the budget."""
        cache_bytes, _ = self._store.usage()
        if cache_bytes + incoming > self._settings.max_bytes:
            self.collect(incoming=incoming)

    def free_disk(self, needed: int) -> int:
        """A pull hit a full disk: evict unused modules until ``needed`` bytes are free."""
        return self.collect(disk_needed=needed).freed_bytes

    # the collection

    def collect(
        self,
        *,
        dry_run: bool = False,
        incoming: int = 0,
        disk_needed: int = 0,
        lock_held: bool = False,
    ) -> GcReport:
        """Evict what is due; ``lock_held``: the caller holds ``<root>/.lock`` already."""
        with contextlib.nullcontext() if lock_held else self._store.exclusive():
            self._sweep_leftovers()
            self._store.watch_pins()
            try:
                protected = self._protected()
                modules = self._store.cached_modules()
                disk_free = _disk_free(self._store.modules_dir) if disk_needed else None
                now = self._clock()
            except BaseException:
                with self._store.lock:
                    self._store.stop_watching_locked()
                raise
            with self._store.lock:
                in_use = protected.all() | self._store.stop_watching_locked()
                victims = choose_victims(
                    modules,
                    in_use,
                    max_bytes=self._settings.max_bytes,
                    ttl=self._settings.ttl,
                    now=now,
                    incoming=incoming,
                    disk_free=disk_free,
                    disk_needed=disk_needed,
                )
                moved = [] if dry_run else self._discard_locked(victims)
            put_back = self._delete_or_put_back(moved) if moved else set()
        evicted = tuple(v for v in victims if v.digest not in put_back)
        if not dry_run:
            if evicted:
                self._store.prune_index()
            if self._observer is not None:
                for eviction in evicted:
                    self._observer.module_evicted(eviction.reason, eviction.size)
        remaining = [m for m in modules if m.digest not in {e.digest for e in evicted}]
        return GcReport(
            evicted=evicted,
            in_use=sum(1 for m in modules if m.digest in in_use),
            cache_bytes=sum(m.size for m in remaining),
            cache_modules=len(remaining),
            dry_run=dry_run,
            put_back=tuple(sorted(put_back)),
        )

    def _protected(self) -> _Protected:
        table = MountTable.read(self._mountinfo)
        pinned: set[str] = set()
        for source in self._pin_sources:
            try:
                pinned.update(self._as_module_digests(source()))
            except Exception:
                # Failing safe would mean never collecting; a broken source is a bug to see.
                log.exception("a pin source failed; its modules are not protected this time")
        return _Protected(
            records=self._records.modules(),
            mounted=set(table.sources_from(self._store.modules_dir)),
            pinned_elsewhere=pinned,
        )

    def _as_module_digests(self, digests: Iterable[str]) -> set[str]:
        """Module digests; a manifest digest is accepted and looked up in the index."""
        found = set()
        for digest in digests:
            hex_digest = digest.removeprefix("sha256:")
            if not is_sha256_hex(hex_digest):
                continue
            found.add(hex_digest)
            module = self._store.module_for_manifest(hex_digest)
            if module is not None:
                found.add(module)
        return found

    def _discard_locked(self, victims: list[Eviction]) -> list[tuple[Eviction, Path]]:
        moved = []
        for victim in victims:
            path = self._store.discard_locked(victim.digest)
            if path is not None:
                moved.append((victim, path))
        return moved

    def _delete_or_put_back(self, moved: list[tuple[Eviction, Path]]) -> set[str]:
        """Delete the victims, except those some process started to use meanwhile."""
        records = self._records.modules()
        table = MountTable.read(self._mountinfo)
        mounted_trash = set(table.sources_from(self._store.trash_dir))
        put_back = set()
        for victim, path in moved:
            mounted = path.name in mounted_trash
            wanted = mounted or victim.digest in records
            # Back into modules/, or (stored again meanwhile) left in the trash while mounted.
            if wanted and (self._store.restore(path, victim.digest) or mounted):
                put_back.add(victim.digest)
                log.info(
                    "module came into use while being evicted; kept",
                    extra={"fields": {"digest": f"sha256:{victim.digest}"}},
                )
                continue
            shutil.rmtree(path, ignore_errors=True)
        return put_back

    def _sweep_leftovers(self) -> None:
        """Trash from an interrupted collection, and quarantined modules no mount shows."""
        table: MountTable | None = None
        for directory in (self._store.trash_dir, self._store.quarantine_dir):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            if not names:
                continue
            if table is None:
                table = MountTable.read(self._mountinfo)
            mounted = set(table.sources_from(directory))
            in_trash = directory == self._store.trash_dir
            recorded = self._records.modules() if in_trash else set()
            for name in names:
                digest = name.split(".", 1)[0]
                if name in mounted:
                    if in_trash:
                        self._store.restore(directory / name, digest)
                    continue  # a pod still shows it: its files must stay
                if (
                    in_trash
                    and digest in recorded
                    and self._store.restore(directory / name, digest)
                ):
                    continue
                shutil.rmtree(directory / name, ignore_errors=True)


class PinHandover:
    """Holds the pins of modules fetched for a pin source until that source lists them.

    :meth:`csi_wasm.puller.Puller.get` returns a pinned module; a pin source such as the
    prefetch list records its digest a moment after the fetch returns. Releasing the
    pin at once would leave a moment in which the collector sees neither. So a fetch
    hands its module to :meth:`keep`, and the source is registered through
    :meth:`listing`: each time the collector reads it, the pins of digests it now lists
    are released (the listing protects them from then on), and so are pins that were
    already held at the previous read (their fetch was dropped: no longer listed).
    """

    def __init__(self, release: Callable[[PulledModule], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._held: list[tuple[PulledModule, int]] = []  # (module, reads seen while held)

    def keep(self, module: PulledModule) -> str:
        """Hold ``module``'s pin for the source; returns its digest."""
        with self._lock:
            self._held.append((module, 0))
        return module.digest

    def listing(self, source: PinSource) -> PinSource:
        """``source`` as the collector should read it (see the class docstring)."""

        def read() -> set[str]:
            listed = {digest.removeprefix("sha256:") for digest in source()}
            done, kept = [], []
            with self._lock:
                for module, reads in self._held:
                    if module.digest in listed or reads:
                        done.append(module)
                    else:
                        kept.append((module, reads + 1))
                self._held = kept
            for module in done:
                self._release(module)
            return listed

        return read

    def held(self) -> int:
        with self._lock:
            return len(self._held)


def _disk_free(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class GcLoop:
    """Runs the collector now, then every ``interval`` seconds, and when woken."""

    def __init__(
        self, collector: CacheCollector, interval: float, on_report: Callable[[GcReport], None]
    ) -> None:
        self._collector = collector
        self._interval = interval
        self._on_report = on_report
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        runs = FaultLog(log, "garbage collection")
        while not self._stopping.is_set():
            try:
                report = self._collector.collect()
                runs.succeeded()
                self._on_report(report)
            except Exception as error:
                runs.failed(error)
            self._wake.wait(self._interval)
            self._wake.clear()


def log_report(report: GcReport) -> None:
    """One log line per collection that evicted something (debug level otherwise)."""
    fields = {
        "evicted": len(report.evicted),
        "freed_bytes": report.freed_bytes,
        "cache_bytes": report.cache_bytes,
        "cache_modules": report.cache_modules,
        "in_use": report.in_use,
        "digests": [f"sha256:{e.digest} ({e.reason})" for e in report.evicted],
    }
    level = logging.INFO if report.evicted else logging.DEBUG
    log.log(level, "garbage collected the module cache", extra={"fields": fields})


def print_report(report: GcReport, root: Path, now: float, out: Callable[[str], None]) -> None:
    verb = "would evict" if report.dry_run else "evicted"
    for eviction in report.evicted:
        out(
            f"{verb} sha256:{eviction.digest}  {eviction.size} bytes  "
            f"unused {_age(now - eviction.last_used)}  ({_REASONS[eviction.reason]})"
        )
    for digest in report.put_back:
        out(f"kept sha256:{digest}: it came into use while being evicted")
    freed = "would free" if report.dry_run else "freed"
    out(
        f"{freed} {report.freed_bytes} bytes in {len(report.evicted)} module(s); "
        f"{root} {'would hold' if report.dry_run else 'holds'} {report.cache_bytes} bytes "
        f"in {report.cache_modules} module(s), {report.in_use} in use"
    )


_REASONS = {
    REASON_TTL: "unused longer than --cache-ttl",
    REASON_SIZE: "cache over --cache-max-bytes",
    REASON_DISK: "disk full",
}


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s"


def gc_command(
    root: Path,
    settings: CacheSettings,
    *,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """``csi-wasm gc``: collect now (safe beside a running ``serve``); print what was freed."""
    store = ModuleStore(root)
    if not store.modules_dir.is_dir():
        out(f"csi-wasm: {root} holds no module cache (check --root)")
        return 2
    try:
        report = _collect_beside_serve(store, settings, dry_run)
    except gc_requests.DriverUnreachable as error:
        out(f"csi-wasm: {error}")
        return 1
    print_report(report, root, time.time(), out)
    return 0


def _collect_beside_serve(store: ModuleStore, settings: CacheSettings, dry_run: bool) -> GcReport:
    """Through the driver serving ``store`` if one runs (it sees its pins), else here."""
    with contextlib.ExitStack() as stack:
        with store.exclusive():  # see gc_requests: no driver starts serving meanwhile
            driver = stack.enter_context(gc_requests.connect(store.root))
            if driver is None:
                collector = CacheCollector(store, VolumeRecords(store.root / "volumes"), settings)
                collector.add_pin_source(lambda: held_digests(catalog_dir(store.root)))  # as serve
                return collector.collect(dry_run=dry_run, lock_held=True)
        answer = gc_requests.ask(driver, settings, dry_run=dry_run)  # the driver takes the lock
    try:
        return GcReport(
            evicted=tuple(Eviction(**eviction) for eviction in answer["evicted"]),
            in_use=answer["in_use"],
            cache_bytes=answer["cache_bytes"],
            cache_modules=answer["cache_modules"],
            dry_run=answer["dry_run"],
            put_back=tuple(answer["put_back"]),
        )
    except (KeyError, TypeError) as error:
        raise gc_requests.DriverUnreachable(f"the running driver answered {error!r}") from None
