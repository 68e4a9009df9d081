"""Tests of csi_wasm.deadline with a fake clock."""

from __future__ import annotations

import time

import pytest

from csi_wasm.deadline import Deadline
from csi_wasm.errors import DeadlineExceeded


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_after_and_remaining() -> None:
    clock = FakeClock()
    deadline = Deadline.after(600, clock)
    assert deadline.expires_at == 1600.0
    assert deadline.remaining() == 600.0
    clock.advance(250)
    assert deadline.remaining() == 350.0
    assert not deadline.expired()


def test_clip() -> None:
    clock = FakeClock()
    deadline = Deadline.after(60, clock)
    assert deadline.clip(10) == 10  # a request timeout shorter than what is left
    assert deadline.clip(120) == 60  # clipped to what is left
    clock.advance(55)
    assert deadline.clip(30) == 5
    clock.advance(4.5)
    assert deadline.clip(30) == pytest.approx(0.5)


def test_expiry() -> None:
    clock = FakeClock()
    deadline = Deadline.after(10, clock)
    clock.advance(10)  # exactly at the deadline: expired
    assert deadline.expired()
    assert deadline.remaining() == 0.0
    clock.advance(100)
    assert deadline.remaining() == 0.0  # never negative
    assert deadline.expired()


def test_clip_after_expiry_raises() -> None:
    clock = FakeClock()
    deadline = Deadline.after(1, clock)
    clock.advance(2)
    with pytest.raises(DeadlineExceeded) as info:
        deadline.clip(30)
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert "retry" in info.value.message


def test_check() -> None:
    clock = FakeClock()
    deadline = Deadline.after(5, clock)
    deadline.check("downloading blob sha256:abc")
    clock.advance(4.999)
    deadline.check("downloading blob sha256:abc")
    clock.advance(0.001)
    with pytest.raises(DeadlineExceeded) as info:
        deadline.check("downloading blob sha256:abc")
    message = info.value.message
    assert message.startswith("timed out while downloading blob sha256:abc;")
    assert "--pull-timeout" in message
    assert "\n" not in message


def test_zero_or_negative_deadline_is_expired_at_once() -> None:
    clock = FakeClock()
    assert Deadline.after(0, clock).expired()
    assert Deadline.after(-5, clock).expired()
    with pytest.raises(DeadlineExceeded):
        Deadline.after(0, clock).clip(1)


def test_clock_does_not_take_part_in_equality() -> None:
    assert Deadline(5.0, FakeClock()) == Deadline(5.0, FakeClock())
    assert Deadline(5.0) != Deadline(6.0)
    assert "clock" not in repr(Deadline(5.0))


def test_default_clock_is_monotonic() -> None:
    before = time.monotonic()
    deadline = Deadline.after(60)
    after = time.monotonic()
    assert before + 60 <= deadline.expires_at <= after + 60
    assert 0 < deadline.remaining() <= 60
    assert not deadline.expired()
