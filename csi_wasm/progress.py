"""Long pulls show progress in the log, so a stuck pod can be explained from the log alone.

:class:`ProgressLog` watches the pulls in flight: every ``interval`` seconds (10 s in the
driver), each pull running for at least that long gets one line with its bytes so far,
its rate over the last interval, and the host it is downloading from (a mirror or the
source) or that it waits for a pull slot. One daemon thread runs while pulls are
watched and ends with the last one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
MIB = 1024 * 1024


class Watched(Protocol):
    """What a pull exposes (:class:`csi_wasm.puller._Pull`)."""

    @property
    def shown(self) -> str: ...
    @property
    def host(self) -> str: ...  # "" until a route is chosen
    @property
    def bytes_done(self) -> int: ...
    @property
    def bytes_total(self) -> int: ...


@dataclass
class _Seen:
    started: float
    last_at: float
    last_bytes: int = 0


class ProgressLog:
    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[Watched, _Seen]] = {}
        self._wake = threading.Event()
        self._running = False

    def watch(self, pull: Watched) -> None:
        now = self._clock()
        with self._lock:
            self._watched[id(pull)] = (pull, _Seen(now, now))
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="pull progress", daemon=True).start()

    def active(self) -> bool:
        """Whether the thread runs (it ends soon after the last pull is forgotten)."""
        with self._lock:
            return self._running

    def forget(self, pull: Watched) -> None:
        with self._lock:
            self._watched.pop(id(pull), None)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            with self._lock:
                if not self._watched:
                    self._running = False  # watch() starts a new thread when needed
                    return
                due = self._due(self._clock())
            for fields in due:
                log.info("pull in progress", extra={"fields": fields})

    def _due(self, now: float) -> list[dict[str, object]]:
        """A line for each pull running for at least an interval; called with the lock held."""
        lines = []
        for pull, seen in self._watched.values():
            if now - seen.started < self._interval:
                continue
            done = pull.bytes_done
            rate = max(0, done - seen.last_bytes) / max(now - seen.last_at, 1e-9)
            seen.last_at, seen.last_bytes = now, done
            fields: dict[str, object] = {
                "source": pull.shown,
                "host": pull.host or "waiting for a pull slot",
                "bytes": done,
                "mib_per_s": round(rate / MIB, 3),
                "elapsed_s": round(now - seen.started),
            }
            if pull.bytes_total:
                fields["total_bytes"] = pull.bytes_total
            lines.append(fields)
        return lines
