"""The prefetcher: pull listed modules on every node before a pod asks for them.

:class:`Prefetcher` owns one daemon thread that schedules every listed entry, and runs
each fetch through the ``fetch`` seam (in the driver: the shared puller, so a prefetch
and a pod's publish join the same download) on a thread of its own, at most ``workers``
at a time: a registry that hangs holds up only its own entries, until the pull
timeout ends them. Rules:

* A failure is retried per entry with exponential backoff and jitter, capped
  (``backoff_initial`` doubling up to ``backoff_max``), forever while the entry is
  listed: a tag pushed later, or a registry back from an outage, is picked up.
* An entry fetched once is done, unless its reference can move (pull policy
  ``Always``, the default for ``latest`` or no tag): that one is fetched again every
  ``refresh`` seconds, so a moved tag is pre-pulled too.
* :meth:`Prefetcher.pinned` is the set of module digests of listed, fetched entries:
  garbage collection never evicts them. An entry removed from the list is unpinned and
  no longer retried; a fetch that was running for it is discarded.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from csi_wasm.attributes import (
    ModuleRequest,
    PullPolicy,
)
from csi_wasm.backoff import backoff_delay, jittered
from csi_wasm.errors import CsiWasmError
from csi_wasm.prefetch.entries import PrefetchEntry

log = logging.getLogger(__name__)

DEFAULT_REFRESH = 3600.0
DEFAULT_WORKERS = 4  # fetches at once: a few hanging registries leave room for the rest
_REFRESH_JITTER = 0.1

# --- the prefetcher -------------------------------------------------------------------


Fetch = Callable[[ModuleRequest], str]
Wait = Callable[[threading.Condition, float | None], object]


def _condition_wait(condition: threading.Condition, timeout: float | None) -> object:
    return condition.wait(timeout)


@dataclass(eq=False)
class _Tracked:
    """A listed entry and what happened to it."""

    entry: PrefetchEntry
    request: ModuleRequest
    next_at: float
    digest: str | None = None  # the module fetched last; pinned while listed
    failures: int = 0  # consecutive failed attempts
    error: str | None = None  # of the last attempt, if it failed
    logged_error: str | None = None  # the last failure logged at warning level
    attempted: bool = False
    fetching: bool = False  # an attempt is running (never two at once for one entry)

    @property
    def moving(self) -> bool:
        return self.request.pull_policy is PullPolicy.ALWAYS


class Prefetcher:
    """Fetches every listed module in the background; see the module docstring.

    ``fetch`` pulls a module (or finds it in the cache) and returns its digest (hex);
    it raises :class:`~csi_wasm.errors.CsiWasmError` on failure. ``on_result(url, ok)``
    is told about every finished attempt (metrics). ``workers`` bounds the fetches that
    run at once. ``clock``, ``wait`` (called with the scheduler's condition held, like
    ``Condition.wait``; only the scheduler thread waits through it) and ``jitter`` (a
    draw in [0, 1)) are seams for tests.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        static: Sequence[PrefetchEntry] = (),
        clock: Callable[[], float] = time.monotonic,
        wait: Wait = _condition_wait,
        jitter: Callable[[], float] = random.random,
        backoff_initial: float = 5.0,
        backoff_max: float = 600.0,
        refresh: float = DEFAULT_REFRESH,
        on_result: Callable[[str, bool], None] | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self._fetch = fetch
        self._workers = max(1, workers)
        self._fetching: set[threading.Thread] = set()
        self._clock = clock
        self._wait = wait
        self._jitter = jitter
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._refresh = refresh
        self._on_result = on_result
        self._cond = threading.Condition()
        self._static = self._validated(static, "--prefetch")
        self._dynamic: dict[ModuleRequest, PrefetchEntry] = {}
        self._tracked: dict[ModuleRequest, _Tracked] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        with self._cond:
            self._relist()

    # What callers see.

    def set_dynamic(self, entries: Sequence[PrefetchEntry]) -> None:
        """Replace the ConfigMap's list: new entries are fetched, dropped ones forgotten."""
        dynamic = self._validated(entries, "the prefetch list")
        with self._cond:
            self._dynamic = dynamic
            added, removed = self._relist()
            listed = len(self._tracked)
            self._cond.notify_all()
        log.log(
            logging.INFO if added or removed else logging.DEBUG,
            "prefetch list updated",
            extra={"fields": {"listed": listed, "added": added, "removed": removed}},
        )

    def fetch_again(self, requests: Iterable[ModuleRequest]) -> int:
        """Make these listed entries due now; how many were listed.

        For a module that went away under a fetched entry (``csi-wasm fsck`` took it out
        of the cache and the catalog): an entry pinned by digest is otherwise never
        fetched again.
        """
        with self._cond:
            now = self._clock()
            due = [self._tracked[r] for r in requests if r in self._tracked]
            for tracked in due:
                tracked.next_at = min(tracked.next_at, now)
            if due:
                self._cond.notify_all()
        return len(due)

    def pinned(self) -> set[str]:
        """Module digests of every listed entry that was fetched: never evict these."""
        with self._cond:
            return {t.digest for t in self._tracked.values() if t.digest is not None}

    def status(self) -> dict[str, str]:
        """url -> ``ready <digest>``, ``retrying in Ns: <message>`` or ``pending``."""
        with self._cond:
            now = self._clock()
            return {t.entry.shown: self._describe(t, now) for t in self._tracked.values()}

    def counts(self) -> dict[str, int]:
        """How many listed entries are ``ready``, ``failing`` or ``pending`` (a gauge)."""
        counts = {"ready": 0, "failing": 0, "pending": 0}
        with self._cond:
            for tracked in self._tracked.values():
                counts[_state(tracked)] += 1
        return counts

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the scheduler; fetches in progress are not waited for beyond ``timeout``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads = [self._thread, *self._fetching]
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def in_flight(self) -> int:
        """How many fetches are running now."""
        with self._cond:
            return len(self._fetching)

    # The list.

    def _validated(
        self, entries: Sequence[PrefetchEntry], origin: str
    ) -> dict[ModuleRequest, PrefetchEntry]:
        valid: dict[ModuleRequest, PrefetchEntry] = {}
        for entry in entries:
            try:
                request = entry.request()
            except CsiWasmError as error:
                log.warning(
                    "prefetch entry skipped",
                    extra={
                        "fields": {"origin": origin, "url": entry.shown, "error": error.message}
                    },
                )
                continue
            valid.setdefault(request, entry)
        return valid

    def _relist(self) -> tuple[int, int]:
        """Track exactly static + dynamic; the numbers of entries added and removed."""
        wanted = dict(self._static)
        for request, entry in self._dynamic.items():
            wanted.setdefault(request, entry)
        now = self._clock()
        removed = [t for request, t in self._tracked.items() if request not in wanted]
        for tracked in removed:
            log.info(
                "module no longer listed for prefetch; unpinned",
                extra={"fields": {"url": tracked.entry.shown, "digest": tracked.digest}},
            )
        kept = {r: t for r, t in self._tracked.items() if r in wanted}
        added = 0
        tracked_now: dict[ModuleRequest, _Tracked] = {}
        for request, entry in wanted.items():
            existing = kept.get(request)
            if existing is None:
                existing = _Tracked(entry, request, next_at=now)
                added += 1
            tracked_now[request] = existing
        self._tracked = tracked_now
        return added, len(removed)

    # The scheduler and its fetches.

    def _run(self) -> None:
        while True:
            with self._cond:
                tracked = self._next_due()
                if tracked is None:
                    return
                tracked.fetching = True
                fetching = threading.Thread(
                    target=self._fetch_one, args=(tracked,), name="prefetch-fetch", daemon=True
                )
                self._fetching.add(fetching)
            fetching.start()

    def _fetch_one(self, tracked: _Tracked) -> None:
        try:
            self._attempt(tracked)
        finally:
            with self._cond:
                tracked.fetching = False
                self._fetching.discard(threading.current_thread())
                self._cond.notify_all()  # a free worker: the scheduler may start another

    def _next_due(self) -> _Tracked | None:
        """The entry to fetch now, waiting until one is due and a worker is free; None
        once stopping. Entries being fetched wait for their attempt to end."""
        while not self._stopping:
            now = self._clock()
            idle = [t for t in self._tracked.values() if not t.fetching]
            free = len(self._fetching) < self._workers
            due = [t for t in idle if t.next_at <= now]
            if due and free:
                return min(due, key=lambda t: t.next_at)
            upcoming = [t.next_at for t in idle if math.isfinite(t.next_at)]
            if free and upcoming:
                self._wait(self._cond, max(0.0, min(upcoming) - now))
            else:
                self._wait(self._cond, None)  # woken by a new list, a worker, or stop()
        return None

    def _attempt(self, tracked: _Tracked) -> None:
        shown = tracked.entry.shown
        digest: str | None = None
        error = ""
        # Start and end of every attempt at info level: a fetch can hang on a registry
        # for minutes, and the log alone must show what the prefetcher is doing.
        started = self._clock()
        log.info(
            "prefetch attempt started",
            extra={"fields": {"url": shown, "attempt": tracked.failures + 1}},
        )
        try:
            digest = self._fetch(tracked.request)
        except CsiWasmError as caught:
            error = caught.message
        except Exception as caught:  # a bug in the seam must not end prefetching
            error = f"internal error ({type(caught).__name__})"
            log.exception("prefetch failed unexpectedly", extra={"fields": {"url": shown}})
        with self._cond:
            if self._tracked.get(tracked.request) is not tracked:
                log.debug(
                    "prefetch result dropped: no longer listed", extra={"fields": {"url": shown}}
                )
                return
            now = self._clock()
            tracked.attempted = True
            seconds = round(now - started, 3)
            if digest is not None:
                self._succeeded(tracked, digest, now, seconds)
            else:
                self._failed(tracked, error, now, seconds)
        if self._on_result is not None:
            try:
                self._on_result(shown, digest is not None)
            except Exception:
                log.exception("prefetch result observer failed")

    def _succeeded(self, tracked: _Tracked, digest: str, now: float, seconds: float) -> None:
        previous, failures = tracked.digest, tracked.failures
        tracked.digest, tracked.failures = digest, 0
        tracked.error = tracked.logged_error = None
        if tracked.moving:
            tracked.next_at = now + jittered(self._refresh, self._jitter(), _REFRESH_JITTER)
        else:
            tracked.next_at = math.inf
        fields: dict[str, object] = {
            "url": tracked.entry.shown,
            "digest": digest,
            "seconds": seconds,
        }
        if previous is not None and previous != digest:
            fields["previous_digest"] = previous
        if failures:
            fields["failed_attempts"] = failures
        log.info("module prefetched", extra={"fields": fields})

    def _failed(self, tracked: _Tracked, error: str, now: float, seconds: float) -> None:
        tracked.failures += 1
        tracked.error = error
        delay = backoff_delay(
            tracked.failures, self._backoff_initial, self._backoff_max, self._jitter()
        )
        tracked.next_at = now + delay
        # A new error is a warning; a repeat of the same one only ends the attempt.
        level = logging.WARNING if error != tracked.logged_error else logging.INFO
        tracked.logged_error = error
        log.log(
            level,
            "cannot prefetch module; will retry",
            extra={
                "fields": {
                    "url": tracked.entry.shown,
                    "error": error,
                    "attempt": tracked.failures,
                    "retry_in_s": round(delay, 1),
                    "seconds": seconds,
                }
            },
        )

    @staticmethod
    def _describe(tracked: _Tracked, now: float) -> str:
        if tracked.error is not None:
            left = max(0, math.ceil(tracked.next_at - now))
            return f"retrying in {left}s: {tracked.error}"
        if tracked.digest is not None:
            return f"ready {tracked.digest}"
        return "pending"


def _state(tracked: _Tracked) -> str:
    if tracked.error is not None:
        return "failing"
    return "ready" if tracked.digest is not None else "pending"
