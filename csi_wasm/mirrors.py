"""Registry mirrors: ``--registry-mirror SOURCE=MIRROR[/PREFIX]``.

A pull of a reference on SOURCE is tried through each of its mirrors first, in the
order given, then on SOURCE itself. This is how a fleet of nodes puts Harbor's proxy
cache, Spegel or Dragonfly in front of a registry. The mirror can add a path prefix
(Harbor names its proxy-cache projects: ``docker.io=harbor.example.com/dockerhub``).
Content is checked against its digest whichever host serves it, so a mirror can
make a pull faster but never change what is mounted.

A mirror is an accelerator, never a new way to fail: :class:`MirrorHealth` remembers
a mirror that failed and sends pulls straight to the source until its backoff ends
(5 s doubling to 5 min, reset by a success), so a dead mirror costs one timeout, then
none. When the backoff ends, one pull tries the mirror again while the others keep
going to the source: a herd never waits on a dead mirror together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from csi_wasm.reference import Reference, parse_reference

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 5.0
BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class Mirror:
    source: str  # registry host[:port] as in Reference.registry
    host: str
    prefix: str  # repository prefix on the mirror, "" for none

    def rewrite(self, reference: Reference) -> Reference:
        repository = (
            f"{self.prefix}/{reference.repository}" if self.prefix else reference.repository
        )
        return replace(reference, registry=self.host, repository=repository)

    def __str__(self) -> str:
        return f"{self.source}={self.host}" + (f"/{self.prefix}" if self.prefix else "")


def parse_mirror(text: str) -> Mirror:
    """``SOURCE=MIRROR[/PREFIX]``; ValueError naming the flag when malformed."""
    source, sep, target = text.partition("=")
    if not sep or not source.strip() or not target.strip():
        raise ValueError(f"--registry-mirror {text!r} must look like SOURCE=MIRROR[/PREFIX]")
    try:
        # Parse both through the reference grammar so hosts are normalised alike
        # (docker.io, index.docker.io) and a typo is caught at start-up.
        source_ref = parse_reference(f"{source.strip()}/probe")
        target_ref = parse_reference(f"{target.strip().rstrip('/')}/probe")
    except Exception as error:
        raise ValueError(f"--registry-mirror {text!r}: {error}") from None
    prefix = target_ref.repository.removesuffix("probe").rstrip("/")
    return Mirror(source_ref.registry, target_ref.registry, prefix)


class Mirrors:
    def __init__(self, mirrors: Iterable[Mirror] = ()) -> None:
        self._by_source: dict[str, list[Mirror]] = {}
        for mirror in mirrors:
            self._by_source.setdefault(mirror.source, []).append(mirror)

    def candidates(self, reference: Reference) -> list[Reference]:
        """Where to try ``reference``: its mirrors in order, then the source."""
        routes = [m.rewrite(reference) for m in self._by_source.get(reference.registry, [])]
        return [*routes, reference]

    def hosts(self) -> frozenset[str]:
        """Every mirror host (each gets a mirror's short timeouts in the transport)."""
        return frozenset(m.host for mirrors in self._by_source.values() for m in mirrors)


@dataclass
class _State:
    failures: int = 0  # consecutive failures; 0 while up
    retry_at: float = 0.0  # while down: when one pull may try the mirror again
    trying: bool = False  # that pull is under way


class MirrorHealth:
    """Which mirror hosts are down, and when each may be tried again.

    Thread-safe. Every :meth:`take` that returned True must be followed by exactly
    one of :meth:`failed`, :meth:`answered` or :meth:`abandoned` for that host.
    ``on_change(host, up)`` is told of every change (the ``csi_wasm_mirror_up`` gauge);
    ``clock`` is the seam for tests.
    """

    def __init__(
        self,
        hosts: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        initial: float = BACKOFF_INITIAL,
        cap: float = BACKOFF_MAX,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._clock = clock
        self._initial = initial
        self._cap = cap
        self._on_change = on_change
        self._lock = threading.Lock()
        self._states = {host: _State() for host in hosts}
        for host in self._states:
            self._tell(host, up=True)

    def take(self, host: str) -> bool:
        """Whether to try ``host`` now: it is up, or its backoff ended and no one is trying."""
        with self._lock:
            state = self._states.setdefault(host, _State())
            if state.failures == 0:
                return True
            if state.trying or self._clock() < state.retry_at:
                return False
            state.trying = True
            return True

    def answered(self, host: str) -> None:
        """The mirror answered (a module, or a not-found: either way it is serving)."""
        with self._lock:
            state = self._states.setdefault(host, _State())
            was_down, down_for = state.failures > 0, state.failures
            state.failures, state.trying = 0, False
        if was_down:
            log.info(
                "mirror is back up",
                extra={"fields": {"mirror": host, "failed_attempts": down_for}},
            )
            self._tell(host, up=True)

    def failed(self, host: str, error: str) -> None:
        """The mirror did not answer: skip it until its backoff ends."""
        with self._lock:
            state = self._states.setdefault(host, _State())
            state.failures += 1
            state.trying = False
            delay = min(self._cap, self._initial * 2.0 ** min(state.failures - 1, 30))
            state.retry_at = self._clock() + delay
            went_down = state.failures == 1
        fields = {"mirror": host, "error": error, "retry_in_s": delay}
        if went_down:
            log.warning(
                "mirror is down; pulling from the source meanwhile", extra={"fields": fields}
            )
            self._tell(host, up=False)
        else:
            log.debug("mirror still down", extra={"fields": fields})

    def abandoned(self, host: str) -> None:
        """A try ended without telling whether the mirror works (e.g. the pull's deadline)."""
        with self._lock:
            state = self._states.setdefault(host, _State())
            state.trying = False

    def is_up(self, host: str) -> bool:
        with self._lock:
            state = self._states.get(host)
            return state is None or state.failures == 0

    def _tell(self, host: str, *, up: bool) -> None:
        if self._on_change is not None:
            self._on_change(host, up)
