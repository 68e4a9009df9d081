"""Tests of csi_wasm.prefetch.prefetcher: fetching, pinning, retrying listed modules.

Driven through its seams: a fake ``fetch`` and a fake time whose ``wait`` lets a
test advance the clock and wait until the worker has nothing left to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from support.logs import logged_text, warnings_in
from support.prefetch import HEX_A, HEX_B, HEX_C, HEX_D, LATEST, PINNED, SIGNATURE, A, B

from csi_wasm.attributes import ModuleRequest
from csi_wasm.errors import DigestMismatch, NotFound, Unavailable
from csi_wasm.prefetch import (
    PrefetchEntry,
    Prefetcher,
)

# --- fakes ---------------------------------------------------------------------------


class FakeTime:
    """The prefetcher's clock and wait. The scheduler only moves on when notified: by the
    prefetcher itself (new list, a fetch done, stop) or by :meth:`advance` / :meth:`settle`.

    Settled means: the scheduler waits, and every fetch running is one a test holds
    (:meth:`FakeFetch.hold`); ``in_flight`` tells how many run (set by make_prefetcher).
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.timeouts: list[float | None] = []  # what the scheduler asked to wait, in order
        self.in_flight: Callable[[], int] = lambda: 0
        self._meta = threading.Condition()
        self._conditions: list[threading.Condition] = []
        self._generation = 0
        self._slept_at = -1
        self._sleeping = False
        self._idle = False  # when it last began to wait: only held fetches were running
        self._held = 0

    def clock(self) -> float:
        return self.now

    def wait(self, condition: threading.Condition, timeout: float | None) -> bool:
        # Called with ``condition`` held, as Condition.wait is.
        running = self.in_flight()  # consistent: the condition (an RLock) is held
        with self._meta:
            if condition not in self._conditions:
                self._conditions.append(condition)
            self._sleeping = True
            self._slept_at = self._generation
            self._idle = running == self._held
            self.timeouts.append(timeout)
            self._meta.notify_all()
        condition.wait()
        with self._meta:
            self._sleeping = False
        return True

    def settle(self, action: Callable[[], object] | None = None) -> None:
        """Do ``action``, then wait until the worker has handled everything due."""
        if action is not None:
            action()
        with self._meta:
            self._generation += 1
            conditions = list(self._conditions)
        for condition in conditions:
            with condition:
                condition.notify_all()
        with self._meta:
            settled = self._meta.wait_for(
                lambda: self._sleeping and self._slept_at == self._generation and self._idle,
                timeout=10,
            )
        assert settled, "the prefetcher did not settle"

    def held(self, change: int) -> None:
        """A fetch is held (+1) by a test or let go (-1, before it is let go)."""
        with self._meta:
            self._held += change
            conditions = list(self._conditions)
        if change > 0:  # the scheduler looks again: maybe only held fetches run now
            for condition in conditions:
                with condition:
                    condition.notify_all()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.settle()


Outcome = str | Exception


class FakeFetch:
    """Outcomes per source (``str(request.source)``); the last one repeats."""

    def __init__(self, outcomes: dict[str, list[Outcome]], time_: FakeTime) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, float]] = []  # (source, clock at the call)
        self.entered = threading.Event()
        self.most_at_once = 0  # the most fetches that ever ran at the same time
        self._gates: dict[str, threading.Event] = {}
        self._waiting: dict[str, int] = {}  # fetches held at each gate now
        self._running = 0
        self._time = time_
        self._lock = threading.Lock()

    def __call__(self, request: ModuleRequest) -> str:
        key = str(request.source)
        with self._lock:
            self.calls.append((key, self._time.now))
            outcomes = self.outcomes[key]
            outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
            gate = self._gates.get(key)
            held = gate is not None and not gate.is_set()
            if held:
                self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            if gate is not None and held:
                self._time.held(+1)
                self.entered.set()
                assert gate.wait(10)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            with self._lock:
                self._running -= 1

    def hold(self, source: str) -> None:
        """Fetches of ``source`` wait (hang, as a registry that never answers) until
        :meth:`release`."""
        self._gates[source] = threading.Event()

    def release(self, source: str) -> None:
        with self._lock:
            gate = self._gates.pop(source)
            held = self._waiting.pop(source, 0)
        if held:
            self._time.held(-held)
        gate.set()

    def sources(self) -> list[str]:
        with self._lock:
            return [source for source, _ in self.calls]

    def batches(self, *sizes: int) -> list[list[str]]:
        """The sources in consecutive batches of ``sizes``, each sorted: fetches started
        together run in parallel, in no set order."""
        sources, batches = self.sources(), []
        for size in sizes:
            batches.append(sorted(sources[:size]))
            sources = sources[size:]
        return [*batches, sources] if sources else batches


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_prefetcher(fake_time: FakeTime) -> Iterator[Callable[..., Prefetcher]]:
    made: list[Prefetcher] = []

    def make(fetch: Callable[[ModuleRequest], str], **options: Any) -> Prefetcher:
        options.setdefault("clock", fake_time.clock)
        options.setdefault("wait", fake_time.wait)
        options.setdefault("jitter", lambda: 0.0)
        prefetcher = Prefetcher(fetch, **options)
        fake_time.in_flight = prefetcher.in_flight
        made.append(prefetcher)
        return prefetcher

    yield make
    for prefetcher in made:
        prefetcher.stop()


# --- the prefetcher -------------------------------------------------------------------


def test_every_listed_module_is_fetched_and_pinned(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({A: [HEX_A], B: [HEX_B], PINNED: [HEX_D]}, fake_time)
    results: list[tuple[str, bool]] = []
    prefetcher = make_prefetcher(
        fetch,
        static=[PrefetchEntry(f"oci://{A}")],
        on_result=lambda url, ok: results.append((url, ok)),
    )
    assert prefetcher.status() == {f"oci://{A}": "pending"}
    assert prefetcher.counts() == {"ready": 0, "failing": 0, "pending": 1}

    fake_time.settle(prefetcher.start)
    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(B), PrefetchEntry(PINNED)]))

    assert fetch.batches(1, 2) == [[A], sorted([B, PINNED])]
    assert prefetcher.pinned() == {HEX_A, HEX_B, HEX_D}
    assert prefetcher.status() == {
        f"oci://{A}": f"ready {HEX_A}",
        B: f"ready {HEX_B}",
        PINNED: f"ready {HEX_D}",
    }
    assert prefetcher.counts() == {"ready": 3, "failing": 0, "pending": 0}
    assert results[0] == (f"oci://{A}", True)
    assert sorted(results[1:]) == sorted([(B, True), (PINNED, True)])
    assert fake_time.timeouts[-1] is None  # nothing can move: nothing more to do, ever


def test_the_same_module_listed_twice_is_fetched_once(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({A: [HEX_A]}, fake_time)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry(f"oci://{A}")])
    fake_time.settle(prefetcher.start)
    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(A), PrefetchEntry(A)]))

    assert fetch.sources() == [A]
    assert prefetcher.status() == {f"oci://{A}": f"ready {HEX_A}"}


ENDS = ("module prefetched", "cannot prefetch module; will retry")


def test_failures_are_retried_with_growing_backoff(
    fake_time: FakeTime,
    make_prefetcher: Callable[..., Prefetcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="csi_wasm.prefetch.prefetcher")
    down = Unavailable("registry ghcr.io answered 503; retry later")
    fetch = FakeFetch({A: [down, down, down, down, HEX_A]}, fake_time)
    results: list[bool] = []
    prefetcher = make_prefetcher(
        fetch, static=[PrefetchEntry(A)], on_result=lambda _url, ok: results.append(ok)
    )
    start = fake_time.now

    fake_time.settle(prefetcher.start)
    assert prefetcher.status() == {A: f"retrying in 5s: {down.message}"}
    assert prefetcher.counts() == {"ready": 0, "failing": 1, "pending": 0}
    assert prefetcher.pinned() == set()
    fake_time.advance(4)
    assert len(fetch.calls) == 1
    assert prefetcher.status() == {A: f"retrying in 1s: {down.message}"}
    for _ in range(4):
        fake_time.advance(fake_time.timeouts[-1] or 0)

    assert [when - start for _, when in fetch.calls] == [0, 5, 15, 35, 75]
    assert prefetcher.status() == {A: f"ready {HEX_A}"}
    assert prefetcher.pinned() == {HEX_A}
    assert results == [False, False, False, False, True]
    # The same failure is a warning once, then info; the recovery is logged.
    assert warnings_in(caplog) == ["cannot prefetch module; will retry"]
    assert "failed_attempts" in logged_text(caplog)
    # Every attempt's start and end is in the log at info level, with how long it took.
    infos = [r for r in caplog.records if r.levelno >= logging.INFO]
    started = [r.fields["attempt"] for r in infos if r.getMessage() == "prefetch attempt started"]  # type: ignore[attr-defined]
    ended = [r for r in infos if r.getMessage() in ENDS]
    assert started == [1, 2, 3, 4, 5]
    assert [r.getMessage() for r in ended] == [ENDS[1]] * 4 + [ENDS[0]]
    assert all("seconds" in r.fields for r in ended)  # type: ignore[attr-defined]


def test_the_backoff_is_capped_and_jittered(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({A: [NotFound("tag v1 not found")]}, fake_time)
    draws = iter([0.0, 0.0, 0.0, 0.0, 0.5, 0.999])
    prefetcher = make_prefetcher(
        fetch,
        static=[PrefetchEntry(A)],
        backoff_initial=5.0,
        backoff_max=12.0,
        jitter=lambda: next(draws),
    )
    fake_time.settle(prefetcher.start)
    delays = [fake_time.timeouts[-1]]
    for _ in range(5):
        fake_time.advance(fake_time.timeouts[-1] or 0)
        delays.append(fake_time.timeouts[-1])

    # 5, 10, then the 12 s cap; a draw of r takes up to half off: 12 * (1 - r / 2).
    assert delays == pytest.approx([5.0, 10.0, 12.0, 12.0, 9.0, 6.006])


def test_an_unexpected_error_is_retried_and_does_not_stop_the_worker(
    fake_time: FakeTime,
    make_prefetcher: Callable[..., Prefetcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetch = FakeFetch({A: [RuntimeError("bug"), HEX_A], B: [HEX_B]}, fake_time)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry(A), PrefetchEntry(B)])

    fake_time.settle(prefetcher.start)
    assert prefetcher.status() == {
        A: "retrying in 5s: internal error (RuntimeError)",
        B: f"ready {HEX_B}",
    }
    assert any(r.exc_info for r in caplog.records)  # the traceback of a bug is logged
    fake_time.advance(5)
    assert prefetcher.status()[A] == f"ready {HEX_A}"


def test_pinned_holds_digests_only_while_listed(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({A: [HEX_A], B: [HEX_B], PINNED: [HEX_D]}, fake_time)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry(A)])
    fake_time.settle(prefetcher.start)
    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(B), PrefetchEntry(PINNED)]))
    assert prefetcher.pinned() == {HEX_A, HEX_B, HEX_D}

    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(B)]))
    assert prefetcher.pinned() == {HEX_A, HEX_B}
    fake_time.settle(lambda: prefetcher.set_dynamic([]))
    assert prefetcher.pinned() == {HEX_A}  # a --prefetch flag stays listed
    assert set(prefetcher.status()) == {A}

    # Listed again: fetched again (from the cache, in the driver) and pinned again.
    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(B)]))
    assert fetch.batches(1, 2, 1) == [[A], sorted([B, PINNED]), [B]]
    assert prefetcher.pinned() == {HEX_A, HEX_B}


def test_an_entry_removed_from_the_list_is_no_longer_retried(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({A: [Unavailable("registry down")], B: [HEX_B]}, fake_time)
    prefetcher = make_prefetcher(fetch)
    fake_time.settle(prefetcher.start)
    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(A), PrefetchEntry(B)]))
    fake_time.advance(5)
    assert fetch.batches(2, 1) == [[A, B], [A]]

    fake_time.settle(lambda: prefetcher.set_dynamic([PrefetchEntry(B)]))
    fake_time.advance(3600)

    assert fetch.batches(2, 1) == [[A, B], [A]]
    assert prefetcher.status() == {B: f"ready {HEX_B}"}
    assert prefetcher.counts() == {"ready": 1, "failing": 0, "pending": 0}


def test_a_fetch_finishing_after_its_entry_was_removed_is_dropped(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({A: [HEX_A]}, fake_time)
    fetch.hold(A)
    prefetcher = make_prefetcher(fetch)
    prefetcher.start()
    prefetcher.set_dynamic([PrefetchEntry(A)])
    assert fetch.entered.wait(10)

    prefetcher.set_dynamic([])  # does not wait for the fetch
    fake_time.settle(lambda: fetch.release(A))

    assert prefetcher.pinned() == set()
    assert prefetcher.status() == {}


def test_one_hanging_fetch_does_not_hold_up_the_others(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    down = Unavailable("registry down")
    fetch = FakeFetch({A: [HEX_A], B: [down, HEX_B], PINNED: [HEX_D]}, fake_time)
    fetch.hold(A)  # its registry accepts the connection and never answers
    prefetcher = make_prefetcher(
        fetch, static=[PrefetchEntry(A), PrefetchEntry(B), PrefetchEntry(PINNED)]
    )
    start = fake_time.now

    fake_time.settle(prefetcher.start)
    assert prefetcher.status() == {
        A: "pending",
        B: f"retrying in 5s: {down.message}",
        PINNED: f"ready {HEX_D}",
    }
    fake_time.advance(5)  # B's retry is on time, A still hangs
    assert prefetcher.status()[B] == f"ready {HEX_B}"
    assert [when - start for source, when in fetch.calls if source == B] == [0, 5]
    assert prefetcher.pinned() == {HEX_B, HEX_D}
    assert prefetcher.in_flight() == 1

    fake_time.settle(lambda: fetch.release(A))
    assert prefetcher.status()[A] == f"ready {HEX_A}"
    assert prefetcher.pinned() == {HEX_A, HEX_B, HEX_D}
    assert fetch.sources().count(A) == 1  # a running fetch is never started twice


def test_at_most_workers_fetches_run_at_once(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    listed = [A, B, LATEST, PINNED]
    fetch = FakeFetch({A: [HEX_A], B: [HEX_B], LATEST: [HEX_C], PINNED: [HEX_D]}, fake_time)
    for source in listed:
        fetch.hold(source)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry(s) for s in listed], workers=2)

    fake_time.settle(prefetcher.start)
    first = fetch.sources()
    assert len(first) == 2 and prefetcher.in_flight() == 2
    assert fake_time.timeouts[-1] is None  # waits for a free worker, not for a time

    fake_time.settle(lambda: fetch.release(first[0]))
    assert len(fetch.sources()) == 3 and prefetcher.in_flight() == 2
    released = {first[0]}
    while len(released) < len(listed):  # let the running ones go, one at a time
        source = next(s for s in fetch.sources() if s not in released)
        fake_time.settle(partial(fetch.release, source))
        released.add(source)
        assert prefetcher.in_flight() == min(2, len(listed) - len(released))

    assert sorted(fetch.sources()) == sorted(listed)
    assert prefetcher.pinned() == {HEX_A, HEX_B, HEX_C, HEX_D}
    assert fetch.most_at_once == 2
    assert prefetcher.in_flight() == 0


def test_moving_tags_are_refreshed_and_a_moved_tag_is_pinned_anew(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch(
        {A: [HEX_A], B: [HEX_B, HEX_C], LATEST: [HEX_C, HEX_D], PINNED: [HEX_D]}, fake_time
    )
    prefetcher = make_prefetcher(
        fetch,
        refresh=600.0,
        static=[
            PrefetchEntry(A),  # a tag other than latest: IfNotPresent, fetched once
            PrefetchEntry(B, image_pull_policy="Always"),
            PrefetchEntry(LATEST),  # no tag: Always
            PrefetchEntry(PINNED),  # a digest never moves
        ],
    )
    fake_time.settle(prefetcher.start)
    assert prefetcher.pinned() == {HEX_A, HEX_B, HEX_C, HEX_D}
    assert fake_time.timeouts[-1] == 600.0

    fake_time.advance(599)
    assert len(fetch.calls) == 4
    fake_time.advance(1)

    assert fetch.batches(4, 2) == [sorted([A, B, LATEST, PINNED]), sorted([B, LATEST])]
    assert prefetcher.status() == {
        A: f"ready {HEX_A}",
        B: f"ready {HEX_C}",
        LATEST: f"ready {HEX_D}",
        PINNED: f"ready {HEX_D}",
    }
    assert prefetcher.pinned() == {HEX_A, HEX_C, HEX_D}  # B's old module is unpinned
    fake_time.advance(600)
    assert fetch.batches(4, 2, 2)[2] == sorted([B, LATEST])


def test_a_failed_refresh_keeps_the_module_pinned_and_retries(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    down = Unavailable("registry down")
    fetch = FakeFetch({LATEST: [HEX_C, down, HEX_C]}, fake_time)
    prefetcher = make_prefetcher(fetch, refresh=600.0, static=[PrefetchEntry(LATEST)])
    fake_time.settle(prefetcher.start)

    fake_time.advance(600)
    assert prefetcher.pinned() == {HEX_C}
    assert prefetcher.status() == {LATEST: "retrying in 5s: registry down"}
    fake_time.advance(5)
    assert prefetcher.status() == {LATEST: f"ready {HEX_C}"}
    assert fake_time.timeouts[-1] == 600.0


def test_a_wrong_digest_is_retried_too(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    # A final error for a pod (the module is not what was promised) may be fixed by a
    # push: the prefetcher keeps trying, slowly.
    wrong = DigestMismatch(f"sha256 mismatch for {A}: expected {HEX_B}, but the module is {HEX_A}")
    fetch = FakeFetch({A: [wrong]}, fake_time)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry(A, HEX_B)])
    fake_time.settle(prefetcher.start)
    fake_time.advance(5)
    assert len(fetch.calls) == 2
    assert prefetcher.status()[A].startswith("retrying in 10s: sha256 mismatch")


def test_invalid_entries_are_logged_and_skipped(
    fake_time: FakeTime,
    make_prefetcher: Callable[..., Prefetcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetch = FakeFetch({A: [HEX_A]}, fake_time)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry("oci://Bad Ref")])
    fake_time.settle(prefetcher.start)
    fake_time.settle(
        lambda: prefetcher.set_dynamic(
            [PrefetchEntry(f"https://x.test/f.wasm?sig={SIGNATURE}"), PrefetchEntry(A)]
        )
    )

    assert prefetcher.status() == {A: f"ready {HEX_A}"}
    assert warnings_in(caplog) == ["prefetch entry skipped", "prefetch entry skipped"]
    assert SIGNATURE not in logged_text(caplog)


def test_a_signed_url_is_shown_without_its_query(
    fake_time: FakeTime,
    make_prefetcher: Callable[..., Prefetcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="csi_wasm.prefetch.prefetcher")
    url = f"https://x.test/f.wasm?sig={SIGNATURE}"
    fetch = FakeFetch({url: [Unavailable("x.test answered 503"), HEX_A]}, fake_time)
    seen: list[str] = []
    prefetcher = make_prefetcher(
        fetch, static=[PrefetchEntry(url, HEX_A)], on_result=lambda u, _ok: seen.append(u)
    )
    fake_time.settle(prefetcher.start)
    fake_time.advance(5)

    assert prefetcher.status() == {"https://x.test/f.wasm": f"ready {HEX_A}"}
    assert seen == ["https://x.test/f.wasm"] * 2
    assert SIGNATURE not in logged_text(caplog)


def test_stop_ends_the_worker_thread_while_it_waits() -> None:
    # The real clock and wait: the worker waits 600 s for a retry; stop wakes it.
    calls: list[str] = []
    called = threading.Event()

    def fetch(request: ModuleRequest) -> str:
        calls.append(str(request.source))
        called.set()
        raise Unavailable("registry down")

    before = set(threading.enumerate())
    prefetcher = Prefetcher(fetch, static=[PrefetchEntry(A)], backoff_initial=600.0)
    prefetcher.start()
    prefetcher.start()  # once only
    assert called.wait(10)
    [worker] = [t for t in set(threading.enumerate()) - before if t.name == "prefetch"]
    assert worker.daemon

    started = time.monotonic()
    prefetcher.stop(timeout=10)

    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    assert calls == [A]


def test_stop_does_not_wait_for_a_hanging_fetch_beyond_its_timeout() -> None:
    hanging, entered = threading.Event(), threading.Event()

    def fetch(_request: ModuleRequest) -> str:
        entered.set()
        assert hanging.wait(30)
        return HEX_A

    before = set(threading.enumerate())
    prefetcher = Prefetcher(fetch, static=[PrefetchEntry(A)])
    prefetcher.start()
    assert entered.wait(10)
    [scheduler] = [t for t in set(threading.enumerate()) - before if t.name == "prefetch"]

    prefetcher.stop(timeout=0.05)

    assert not scheduler.is_alive()
    assert prefetcher.in_flight() == 1  # left behind on a daemon thread, as before
    hanging.set()


def test_stop_before_start_and_twice_is_harmless() -> None:
    prefetcher = Prefetcher(lambda _request: HEX_A)
    prefetcher.stop()
    prefetcher.stop()


# --- the watcher: seams ---------------------------------------------------------------


def test_fetch_again_makes_a_fetched_entry_due_now(
    fake_time: FakeTime, make_prefetcher: Callable[..., Prefetcher]
) -> None:
    fetch = FakeFetch({PINNED: [HEX_D], A: [HEX_A]}, fake_time)
    prefetcher = make_prefetcher(fetch, static=[PrefetchEntry(PINNED)])
    fake_time.settle(prefetcher.start)
    assert fetch.sources() == [PINNED]  # pinned by digest: never fetched again by itself

    unlisted = PrefetchEntry(A).request()
    again = prefetcher.fetch_again([PrefetchEntry(PINNED).request(), unlisted])
    fake_time.settle()

    assert again == 1
    assert fetch.sources() == [PINNED, PINNED]
