"""Keep the catalog current: the prefetch list's sources, and a periodic upkeep.

* :class:`PrefetchFile` reads ``--prefetch-file`` when its bytes change. It opens the
  path each time, so kubelet's update of a mounted ConfigMap (a new ``..data``
  directory swapped in by renaming a symlink) is seen like any other change.
* :class:`PrefetchLists` joins the lists of every source (the file, the ConfigMap)
  and hands them to the catalog and the prefetcher. Names are only removed from the
  catalog once every source has been read, so a ConfigMap not yet listed after a
  restart does not empty the catalog.
* :class:`CatalogRefresher` runs every ``interval`` seconds (``--prefetch-refresh``
  or 10 s, whichever is shorter): re-reads the file, puts back files fsck took out,
  and expires retired modules; an entry whose module fsck took out is fetched again.

Tags themselves are re-resolved by the prefetcher (every ``--prefetch-refresh``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from csi_wasm.attributes import ModuleRequest
from csi_wasm.catalog.catalog import Catalog
from csi_wasm.faults import FaultLog
from csi_wasm.prefetch.entries import PrefetchEntry, parse_prefetch_list

log = logging.getLogger(__name__)

FILE_SOURCE = "file"
CONFIGMAP_SOURCE = "configmap"
MAX_FILE_INTERVAL = 10.0
_MAX_FILE_BYTES = 4 * 1024 * 1024

SetList = Callable[[Sequence[PrefetchEntry]], None]
OnProblem = Callable[[str, str], None]  # (source, one-line problem)


class PrefetchFile:
    """``--prefetch-file``: the entries it lists, read again when its content changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: bytes | None = None
        self._last_error: str | None = None

    def poll(self) -> tuple[list[PrefetchEntry], list[str]] | None:
        """(entries, problems) when the content changed since the last poll, else None."""
        try:
            with self.path.open("rb") as handle:
                data = handle.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            data = b""
            self._report(f"--prefetch-file {self.path} does not exist: it lists nothing")
        except OSError as error:
            self._report(f"cannot read --prefetch-file {self.path}: {error.strerror}")
            return None  # keep the last list
        else:
            self._last_error = None
        if data == self._last:
            return None
        self._last = data
        if len(data) > _MAX_FILE_BYTES:
            return [], [f"--prefetch-file {self.path} is larger than {_MAX_FILE_BYTES} bytes"]
        entries, problems = parse_prefetch_list(data.decode("utf-8", errors="replace"))
        log.info(
            "prefetch file read",
            extra={"fields": {"path": str(self.path), "entries": len(entries)}},
        )
        return entries, problems

    def _report(self, message: str) -> None:
        if message != self._last_error:
            log.warning(message)
        self._last_error = message


class PrefetchLists:
    """The prefetch list as the union of its sources; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        set_prefetch: SetList,
        sources: Sequence[str],
        on_problem: OnProblem | None = None,
    ) -> None:
        self._catalog = catalog
        self._set_prefetch = set_prefetch
        self._sources = tuple(sources)
        self._on_problem = on_problem
        self._lists: dict[str, list[PrefetchEntry]] = {}
        self._lock = threading.Lock()

    def updater(self, source: str) -> SetList:
        """The ``on_change`` callback of one source."""
        return lambda entries: self.update(source, entries)

    def update(self, source: str, entries: Sequence[PrefetchEntry]) -> None:
        # One update at a time, so the catalog and the prefetcher see the same order.
        with self._lock:
            self._lists[source] = list(entries)
            combined = [e for name in self._sources for e in self._lists.get(name, [])]
            complete = all(name in self._lists for name in self._sources)
            accepted, problems = self._catalog.set_entries(combined, complete=complete)
            self._set_prefetch(accepted)
        if self._on_problem is not None:
            # Only this source's entries: another source's were reported with its update.
            for entry, problem in problems:
                if any(entry is mine for mine in entries):
                    self._on_problem(source, problem)

    def report(self, source: str, problems: Sequence[str]) -> None:
        for problem in problems:
            log.warning(f"prefetch list problem: {problem}", extra={"fields": {"source": source}})
            if self._on_problem is not None:
                self._on_problem(source, problem)


class CatalogRefresher:
    """One daemon thread: polls the prefetch file and keeps the catalog in shape."""

    def __init__(
        self,
        catalog: Catalog,
        lists: PrefetchLists,
        prefetch_file: PrefetchFile | None,
        interval: float,
        fetch_again: Callable[[list[ModuleRequest]], object] | None = None,
    ) -> None:
        self._fetch_again = fetch_again
        self._catalog = catalog
        self._lists = lists
        self._file = prefetch_file
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalog", daemon=True)

    def tick(self) -> None:
        if self._file is not None:
            changed = self._file.poll()
            if changed is not None:
                entries, problems = changed
                self._lists.report(FILE_SOURCE, problems)
                self._lists.update(FILE_SOURCE, entries)
        lost = self._catalog.repair()
        if lost and self._fetch_again is not None:
            self._fetch_again(lost)
        self._catalog.expire()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        runs = FaultLog(log, "catalog upkeep")  # a read-only root: one line, not one per tick
        while not self._stopping.wait(self._interval):
            try:
                self.tick()
                runs.succeeded()
            except Exception as error:
                runs.failed(error)
