"""Tests of csi_wasm.locks: one operation per volume, a second one refused with ABORTED."""

from __future__ import annotations

import threading

import pytest

from csi_wasm.errors import Aborted
from csi_wasm.locks import VolumeLocks


def test_second_hold_is_aborted_while_first_is_held() -> None:
    locks = VolumeLocks()
    holding = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with locks.hold("vol-1"):
                holding.set()
                release.wait(timeout=10)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert holding.wait(timeout=10)
        with pytest.raises(Aborted) as info, locks.hold("vol-1"):
            pytest.fail("the second operation must not run")
        assert info.value.code == "ABORTED"
        assert "vol-1" in info.value.message
        assert "retry" in info.value.message
        # refusing the second call did not release the first one's hold
        with pytest.raises(Aborted), locks.hold("vol-1"):
            pytest.fail("still held")
    finally:
        release.set()
        thread.join(timeout=10)
    assert errors == []
    with locks.hold("vol-1"):
        pass  # free again once the first is done


def test_different_ids_do_not_block_each_other() -> None:
    locks = VolumeLocks()
    ran: list[str] = []
    with locks.hold("vol-1"), locks.hold("vol-2"):
        ran.append("both")
    assert ran == ["both"]


def test_hold_is_not_reentrant() -> None:
    locks = VolumeLocks()
    with locks.hold("vol"), pytest.raises(Aborted), locks.hold("vol"):
        pass


def test_released_after_an_exception() -> None:
    locks = VolumeLocks()
    with pytest.raises(ValueError, match="boom"), locks.hold("vol"):
        raise ValueError("boom")
    with locks.hold("vol"):
        pass


def test_released_after_aborted_inside() -> None:
    locks = VolumeLocks()
    with pytest.raises(Aborted), locks.hold("outer"):
        raise Aborted("from below")
    with locks.hold("outer"):
        pass


def test_separate_lock_tables_are_independent() -> None:
    first, second = VolumeLocks(), VolumeLocks()
    with first.hold("vol"), second.hold("vol"):
        pass


def test_many_threads_one_winner() -> None:
    locks = VolumeLocks()
    start = threading.Barrier(8)
    inside = threading.Event()
    done = threading.Event()
    results: list[str] = []
    results_lock = threading.Lock()

    def worker() -> None:
        start.wait(timeout=10)
        try:
            with locks.hold("vol"):
                inside.set()
                done.wait(timeout=10)
                outcome = "ran"
        except Aborted:
            outcome = "aborted"
        with results_lock:
            results.append(outcome)
            if len(results) == 7:
                done.set()  # every loser has reported: let the winner finish

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert inside.is_set()
    assert sorted(results) == ["aborted"] * 7 + ["ran"]
