"""Retry delays shared by the background loops (prefetcher, ConfigMap watcher)."""

from __future__ import annotations

# A random draw r in [0, 1) shortens a delay by up to this share: d * (1 - share * r).
BACKOFF_JITTER = 0.5


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def jittered(delay: float, draw: float, share: float) -> float:
    return delay * (1.0 - share * min(max(draw, 0.0), 1.0))


def backoff_delay(failures: int, initial: float, cap: float, draw: float) -> float:
    """``initial`` doubled per failure after the first, capped, then jittered down."""
    exponent = min(max(failures - 1, 0), 62)
    return jittered(min(cap, initial * 2.0**exponent), draw, BACKOFF_JITTER)
