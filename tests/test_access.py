"""The per-repository record of who may be served a cached module."""

from __future__ import annotations

import stat
from pathlib import Path

from csi_wasm.access import AccessRecords
from csi_wasm.registry import Credentials


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


ALICE = Credentials("alice", "alice-secret")
MALLORY = Credentials("mallory", "guess")


def records(tmp_path: Path, clock: Clock, window: float = 3600.0) -> AccessRecords:
    access = AccessRecords(tmp_path / "access", window=window, clock=clock)
    access.prepare()
    return access


def test_unknown_repository_is_never_served_unchecked(tmp_path: Path) -> None:
    access = records(tmp_path, Clock())
    assert not access.may_serve("r.example/private", ALICE)
    assert not access.may_serve("r.example/private", None)


def test_anonymous_pull_opens_the_repository_to_everyone(tmp_path: Path) -> None:
    access = records(tmp_path, Clock())
    access.record_pull("r.example/public", None)
    assert access.may_serve("r.example/public", None)
    assert access.may_serve("r.example/public", MALLORY)


def test_credentials_are_served_only_within_the_window(tmp_path: Path) -> None:
    clock = Clock()
    access = records(tmp_path, clock, window=60)
    access.record_pull("r.example/private", ALICE)
    assert access.may_serve("r.example/private", ALICE)
    assert not access.may_serve("r.example/private", None)
    assert not access.may_serve("r.example/private", MALLORY)
    clock.now += 61
    assert not access.may_serve("r.example/private", ALICE)
    access.record_pull("r.example/private", ALICE)
    assert access.may_serve("r.example/private", ALICE)


def test_records_hold_no_secret_and_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    records(tmp_path, clock).record_pull("r.example/private", ALICE)
    for path in (tmp_path / "access").iterdir():
        assert b"alice-secret" not in path.read_bytes()
    key = tmp_path / "access" / ".key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert records(tmp_path, clock).may_serve("r.example/private", ALICE)


def test_a_lost_key_forgets_every_credential(tmp_path: Path) -> None:
    clock = Clock()
    records(tmp_path, clock).record_pull("r.example/private", ALICE)
    (tmp_path / "access" / ".key").unlink()
    assert not records(tmp_path, clock).may_serve("r.example/private", ALICE)


def test_damaged_record_means_check_again(tmp_path: Path) -> None:
    clock = Clock()
    access = records(tmp_path, clock)
    access.record_pull("r.example/public", None)
    for path in (tmp_path / "access").iterdir():
        if path.name != ".key":
            path.write_bytes(b"\xff not json")
    assert not access.may_serve("r.example/public", None)
