"""A point in monotonic time after which an operation must stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from csi_wasm.errors import DeadlineExceeded

Clock = Callable[[], float]


@dataclass(frozen=True)
class Deadline:
    """An absolute deadline on a monotonic clock.

    One deadline covers a whole pull: per-request timeouts are clipped to what is
    left, so a server that trickles bytes cannot stretch a pull past it.
    """

    expires_at: float
    clock: Clock = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def clip(self, timeout: float) -> float:
        """``timeout`` or what is left of the deadline, whichever is smaller."""
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceeded("the pull ran out of time; kubelet will retry it")
        return min(timeout, left)

    def check(self, doing: str) -> None:
        if self.expired():
            raise DeadlineExceeded(
                f"timed out while {doing}; check the registry's reachability and "
                "speed, or raise --pull-timeout"
            )
