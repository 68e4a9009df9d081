"""The node catalog: named prefetch entries, each shown as ``<name>.wasm`` (CONTRACT.md §10).

:class:`Catalog` keeps what each named entry shows and why, and is told about every
fetch of the prefetch list (:meth:`Catalog.observing` wraps the prefetcher's fetch
seam). Modules enter only through that seam, i.e. through the driver's puller with
node credentials: every check a publish makes has passed before a module is linked.

* A fetch that succeeds links the module under ``sha256/`` and swaps every name whose
  entry asked for it (:mod:`csi_wasm.catalog.directory`); one that fails leaves the
  name on the module it showed and marks it ``failed`` with the reason.
* A module no name shows any longer is *retired*: it stays under ``sha256/`` for
  ``grace`` seconds (pinned WasmPlugins and restarting proxies still find it), then
  :meth:`Catalog.expire` removes it and garbage collection may take it.
* An entry whose name is invalid or taken is refused on its own: listed as ``failed``
  with the reason, never fatal to the others.
* Every change is written to the status file atomically (:mod:`csi_wasm.catalog.status`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from csi_wasm.attributes import ModuleRequest
from csi_wasm.backoff import one_line
from csi_wasm.cache.store import MODULE_FILE, ModuleStore
from csi_wasm.catalog.directory import CatalogDirectory
from csi_wasm.catalog.names import name_problem
from csi_wasm.catalog.status import (
    FAILED,
    PENDING,
    READY,
    STATES,
    CatalogStatus,
    EntryStatus,
    read_status,
    rfc3339,
    status_path,
    write_status,
)
from csi_wasm.errors import CsiWasmError
from csi_wasm.prefetch.entries import PrefetchEntry
from csi_wasm.puller import PulledModule

log = logging.getLogger(__name__)

DEFAULT_GRACE = 24 * 3600.0


@dataclass
class _Entry:
    """One row of the catalog: a named entry, or a refused one (``request`` None)."""

    name: str
    url: str  # as logs show it
    request: ModuleRequest | None
    digest: str | None  # hex of the module <name>.wasm shows
    state: str
    reason: str | None
    since: float

    def status(self) -> EntryStatus:
        return EntryStatus(
            self.name,
            self.url,
            f"sha256:{self.digest}" if self.digest else None,
            self.state,
            self.reason,
            rfc3339(self.since),
        )


class Catalog:
    """One catalog directory and its state; thread-safe."""

    def __init__(
        self,
        path: Path,
        store: ModuleStore,
        *,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._dir = CatalogDirectory(path)
        self._status_file = status_path(path)
        self._store = store
        self._grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        self._named: dict[str, _Entry] = {}
        self._refused: list[_Entry] = []
        self._retired: dict[str, float] = {}

    # Start-up and upkeep.

    def prepare(self) -> None:
        """Create the directory and take up the state the last run left (never blocks)."""
        with self._lock:
            self._dir.prepare()
            status = read_status(self._status_file)
            if status is not None:
                self._retired = dict(status.retired or {})
                for row in status.entries:
                    if name_problem(row.name) is None and row.name not in self._named:
                        self._named[row.name] = _Entry(
                            row.name,
                            row.url,
                            None,
                            row.module_hex,
                            row.state,
                            row.reason,
                            _parse_time(row.since, self._clock()),
                        )
            self._repair_locked()
            self._retire_unshown_locked(self._clock())
            self._save_locked()

    def repair(self) -> list[ModuleRequest]:
        """Put back a name whose file went missing (fsck took out a damaged module).

        Returns the requests of entries left with no module: to be fetched again.
        """
        with self._lock:
            lost = self._repair_locked()
            if lost:
                self._save_locked()
            return [entry.request for entry in lost if entry.request is not None]

    def expire(self) -> list[str]:
        """Remove modules retired longer than the grace period; returns their digests."""
        with self._lock:
            now = self._clock()
            self._retire_unshown_locked(now)
            expired = [d for d, since in self._retired.items() if now - since >= self._grace]
            for digest in expired:
                self._dir.unlink_digest(digest)
                del self._retired[digest]
                log.info(
                    "module left the catalog after the grace period; the cache may evict it",
                    extra={"fields": {"digest": f"sha256:{digest}", "grace_s": self._grace}},
                )
            if expired:
                self._save_locked()
            return expired

    # The list.

    def set_entries(
        self, entries: Sequence[PrefetchEntry], *, complete: bool = True
    ) -> tuple[list[PrefetchEntry], list[tuple[PrefetchEntry, str]]]:
        """Take the prefetch list; returns the entries to prefetch, and those refused with
        a one-line reason each (logged here).

        Unnamed entries are prefetched only. With ``complete`` False (some source of the
        list has not been read yet) names missing from ``entries`` are kept as they are.
        """
        accepted: list[PrefetchEntry] = []
        problems: list[tuple[PrefetchEntry, str]] = []
        with self._lock:
            now = self._clock()
            named: dict[str, _Entry] = {}
            refused: list[_Entry] = []
            for entry in entries:
                if entry.name is None:
                    accepted.append(entry)
                    continue
                request, problem = self._check(entry, named)
                if request is None:
                    reason = problem or "invalid entry"
                    refused.append(_Entry(entry.name, entry.shown, None, None, FAILED, reason, now))
                    line = f"catalog entry {entry.name[:80]!r} ({entry.shown}) skipped: {reason}"
                    problems.append((entry, line))
                    continue
                named[entry.name] = self._listed(entry, request, now)
                accepted.append(entry)
            for name, old in self._named.items():
                if name in named:
                    continue
                if complete:
                    self._dir.unlink_name(name)
                    log.info(
                        "catalog entry removed",
                        extra={"fields": {"name": name, "url": old.url, "digest": old.digest}},
                    )
                else:
                    named[name] = old
            if complete:
                for name in self._dir.names() - named.keys():
                    self._dir.unlink_name(name)  # left by a run that crashed mid-change
            self._named, self._refused = named, refused
            self._retire_unshown_locked(now)
            self._save_locked()
        for _entry, problem in problems:
            log.warning(problem)
        return accepted, problems

    def _check(
        self, entry: PrefetchEntry, named: dict[str, _Entry]
    ) -> tuple[ModuleRequest | None, str | None]:
        assert entry.name is not None
        problem = name_problem(entry.name)
        if problem is None and entry.name in named:
            problem = f"name {entry.name!r} is already used by an earlier entry"
        if problem is not None:
            return None, problem
        try:
            return entry.request(), None
        except CsiWasmError as error:
            return None, one_line(error)

    def _listed(self, entry: PrefetchEntry, request: ModuleRequest, now: float) -> _Entry:
        assert entry.name is not None
        old = self._named.get(entry.name)
        if old is None:
            return _Entry(entry.name, entry.shown, request, None, PENDING, None, now)
        if old.request == request or (old.request is None and old.url == entry.shown):
            old.request, old.url = request, entry.shown
            return old
        # A changed entry: the name keeps showing its module until the new one is here.
        log.info(
            "catalog entry changed",
            extra={"fields": {"name": entry.name, "url": entry.shown, "was": old.url}},
        )
        return _Entry(entry.name, entry.shown, request, old.digest, PENDING, None, now)

    # Fetches.

    def observing(
        self, get: Callable[[ModuleRequest], PulledModule]
    ) -> Callable[[ModuleRequest], PulledModule]:
        """``get`` (the prefetcher's fetch of a pinned module), telling the catalog the outcome."""

        def fetch(request: ModuleRequest) -> PulledModule:
            try:
                module = get(request)
            except CsiWasmError as error:
                self.failed(request, error.message)
                raise
            self.fetched(request, module.digest, module.path / MODULE_FILE)
            return module

        return fetch

    def fetched(self, request: ModuleRequest, module_hex: str, module_file: Path) -> None:
        """``request`` resolved to this (pinned, verified) module: show it under every name."""
        with self._lock:
            targets = [e for e in self._named.values() if e.request == request]
            if not targets:
                return
            now = self._clock()
            before = self._status_locked()
            try:
                self._dir.link_digest(module_hex, module_file)
                self._retired.pop(module_hex, None)
                for entry in targets:
                    self._show_locked(entry, module_hex, module_file, now)
            except OSError as error:
                reason = f"cannot link the module into the catalog: {error.strerror}"
                for entry in targets:
                    _set_state(entry, FAILED, reason, now)
                log.warning(reason, extra={"fields": {"digest": f"sha256:{module_hex}"}})
            self._retire_unshown_locked(now)
            self._save_if_changed_locked(before)

    def failed(self, request: ModuleRequest, message: str) -> None:
        """A fetch for ``request`` failed: its names keep their module and say why."""
        with self._lock:
            targets = [e for e in self._named.values() if e.request == request]
            now = self._clock()
            before = self._status_locked()
            for entry in targets:
                _set_state(entry, FAILED, message, now)
            self._save_if_changed_locked(before)

    def _show_locked(self, entry: _Entry, module_hex: str, module_file: Path, now: float) -> None:
        previous = entry.digest
        swapped = self._dir.link_name(entry.name, module_file)
        entry.digest = module_hex
        _set_state(entry, READY, None, now)
        if swapped or previous != module_hex:
            log.info(
                "catalog entry now shows a new module",
                extra={
                    "fields": {
                        "name": entry.name,
                        "url": entry.url,
                        "old_digest": f"sha256:{previous}" if previous else None,
                        "new_digest": f"sha256:{module_hex}",
                    }
                },
            )

    # What others read.

    def status(self) -> CatalogStatus:
        with self._lock:
            return self._status_locked()

    def counts(self) -> dict[str, int]:
        """Entries by state (the ``csi_wasm_catalog_entries`` gauge)."""
        counts = dict.fromkeys(STATES, 0)
        with self._lock:
            for entry in [*self._named.values(), *self._refused]:
                counts[entry.state] += 1
        return counts

    # Internals; the caller holds the lock.

    def _repair_locked(self) -> list[_Entry]:
        lost: list[_Entry] = []
        now = self._clock()
        for entry in self._named.values():
            if entry.digest is None or self._dir.shows(entry.name, entry.digest):
                continue
            # The cached module, or failing that the catalog's own link of it.
            sources = (
                self._store.module_dir(entry.digest) / MODULE_FILE,
                self._dir.digest_path(entry.digest),
            )
            source = next((path for path in sources if path.is_file()), None)
            if source is not None:
                self._dir.link_digest(entry.digest, source)
                self._dir.link_name(entry.name, source)
                continue
            lost.append(entry)
            log.warning(
                "catalog file missing and its module is no longer cached; it is fetched again",
                extra={"fields": {"name": entry.name, "digest": f"sha256:{entry.digest}"}},
            )
            self._dir.unlink_name(entry.name)
            entry.digest = None
            _set_state(
                entry, FAILED, "its module was removed (fsck found it damaged); fetching again", now
            )
        return lost

    def _retire_unshown_locked(self, now: float) -> None:
        shown = {entry.digest for entry in self._named.values() if entry.digest}
        for digest in self._dir.digests() - shown:
            if digest not in self._retired:
                self._retired[digest] = now
        for digest in list(self._retired):
            if digest in shown:
                del self._retired[digest]

    def _status_locked(self) -> CatalogStatus:
        rows = sorted(self._named.values(), key=lambda e: e.name) + self._refused
        return CatalogStatus(tuple(e.status() for e in rows), dict(self._retired))

    def _save_if_changed_locked(self, before: CatalogStatus) -> None:
        # A refresh that finds the same module changes nothing: no write, no fsync.
        if self._status_locked() != before:
            self._save_locked()

    def _save_locked(self) -> None:
        try:
            write_status(self._status_file, self._status_locked())
        except OSError as error:
            log.warning(
                "cannot write the catalog status",
                extra={"fields": {"path": str(self._status_file), "error": error.strerror}},
            )


def _set_state(entry: _Entry, state: str, reason: str | None, now: float) -> None:
    if entry.state != state:
        entry.since = now
    entry.state, entry.reason = state, reason


def _parse_time(text: str, default: float) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return default
