"""Tests of csi_wasm.cache.gc_requests: ``csi-wasm gc`` collects through a running driver.

The driver's side runs in this process on a real store and a real unix socket;
``gc_command`` is what ``csi-wasm gc`` runs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.driver import wait_for
from support.wasm import make_module

from csi_wasm.cache import gc_requests
from csi_wasm.cache.gc import CacheCollector, gc_command
from csi_wasm.cache.gc_requests import SOCKET_NAME, DriverUnreachable, GcListener
from csi_wasm.cache.store import ModuleStore
from csi_wasm.cache.volumes import VolumeRecords
from csi_wasm.settings import CacheSettings

KIB = 1024
NOTHING = CacheSettings(max_bytes=0)


def add(store: ModuleStore, seed: str) -> str:
    data = make_module(4 * KIB, seed)
    module_hex = hashlib.sha256(data).hexdigest()
    with store.temp_file() as (path, fd):
        os.write(fd, data)
        store.commit_module(path, module_hex)
    return module_hex


def stored(store: ModuleStore) -> set[str]:
    return {m.digest for m in store.cached_modules()}


def make_store(root: Path) -> ModuleStore:
    store = ModuleStore(root)
    store.prepare()
    VolumeRecords(root / "volumes").prepare()
    return store


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    return make_store(tmp_path / "root")


def collector_of(store: ModuleStore) -> CacheCollector:
    return CacheCollector(store, VolumeRecords(store.root / "volumes"), CacheSettings())


@pytest.fixture
def listener(store: ModuleStore) -> Iterator[GcListener]:
    """What serve runs: its own store object (its pins) answering on gc.sock."""
    started = GcListener(store, collector_of(store).requested)
    started.start()
    try:
        yield started
    finally:
        started.close()


def test_gc_beside_a_driver_honours_the_pins_in_its_memory(
    store: ModuleStore, listener: GcListener
) -> None:
    pinned, unused = add(store, "pinned"), add(store, "unused")
    assert store.pin(pinned)  # a publish between picking the module and its record
    lines: list[str] = []

    assert gc_command(store.root, NOTHING, dry_run=True, out=lines.append) == 0
    assert lines[0].startswith(f"would evict sha256:{unused}")
    assert stored(store) == {pinned, unused}

    assert gc_command(store.root, NOTHING, out=lines.append) == 0
    assert stored(store) == {pinned}
    assert lines[-1].startswith("freed 4096 bytes in 1 module(s)")
    assert lines[-1].endswith("1 in use")

    store.unpin(pinned)
    assert gc_command(store.root, NOTHING, out=lines.append) == 0
    assert stored(store) == set()


def test_the_driver_collects_with_its_pin_sources_added_after_it_listens(
    store: ModuleStore,
) -> None:
    listed = add(store, "listed")
    collector = collector_of(store)
    started = GcListener(store, collector.requested)
    started.start()
    try:
        collector.add_pin_source(lambda: {f"sha256:{listed}"})  # the prefetch list, later
        assert gc_command(store.root, NOTHING, out=lambda _line: None) == 0
    finally:
        started.close()
    assert stored(store) == {listed}


def test_without_a_driver_gc_collects_by_itself(store: ModuleStore) -> None:
    unused = add(store, "unused")
    lines: list[str] = []
    assert gc_command(store.root, NOTHING, out=lines.append) == 0
    assert lines[0].startswith(f"evicted sha256:{unused}")
    assert stored(store) == set()


def assert_gc_is_asked_of_a_driver(store: ModuleStore) -> None:
    """With a driver listening, ``csi-wasm gc`` goes through it: the driver's pin holds."""
    started = GcListener(store, collector_of(store).requested)
    started.start()
    try:
        pinned = add(store, "pinned")
        assert store.pin(pinned)
        assert gc_command(store.root, NOTHING, out=lambda _line: None) == 0
        assert stored(store) == {pinned}
    finally:
        started.close()


def test_a_socket_left_by_a_crashed_driver_is_ignored_then_replaced(store: ModuleStore) -> None:
    left = socket.socket(socket.AF_UNIX)
    left.bind(os.fspath(store.root / SOCKET_NAME))  # bound, never listening: a dead driver's
    left.close()
    unused = add(store, "unused")
    assert gc_command(store.root, NOTHING, out=lambda _line: None) == 0
    assert unused not in stored(store)

    assert_gc_is_asked_of_a_driver(store)  # the driver starts again
    assert not (store.root / SOCKET_NAME).exists()


def test_a_root_path_longer_than_a_socket_address_works(tmp_path: Path) -> None:
    store = make_store(tmp_path / ("deep-" * 25) / "root")
    assert len(os.fspath(store.root / SOCKET_NAME)) > 108  # sun_path's limit
    assert_gc_is_asked_of_a_driver(store)


def flock_waiters(path: Path) -> int:
    """How many flock(2) calls wait for ``path`` now (from /proc/locks)."""
    inode = f":{os.stat(path).st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if " -> FLOCK " in line and inode in line)


def test_a_starting_driver_waits_for_a_lone_gc_before_it_serves(store: ModuleStore) -> None:
    """gc found no driver and collects holding .lock: the driver binds its socket, then
    waits for that gc to finish before it goes on (to serve publishes, which pin)."""
    created: list[GcListener] = []
    with store.exclusive():  # the lone gc
        driver = threading.Thread(
            target=lambda: created.append(GcListener(store, collector_of(store).requested))
        )
        driver.start()
        wait_for(lambda: flock_waiters(store.lock_file) == 1, what="the driver to wait")
        assert (store.root / SOCKET_NAME).exists() and created == []
    driver.join(10)
    [listener] = created
    listener.close()


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        pytest.param(
            OSError(5, "Input/output error", "/root/.lock"),
            "/root/.lock: Input/output error; the disk reports I/O errors: "
            "check the node's disk (dmesg) and repair it",
            id="a fault of the root, named",
        ),
        pytest.param(KeyError("cache_bytes"), "KeyError: 'cache_bytes'", id="a bug"),
    ],
)
def test_a_failure_in_the_driver_is_reported_by_gc(
    store: ModuleStore, failure: Exception, shown: str
) -> None:
    def broken(_settings: CacheSettings, _dry_run: bool) -> dict[str, Any]:
        raise failure

    started = GcListener(store, broken)
    started.start()
    lines: list[str] = []
    try:
        assert gc_command(store.root, NOTHING, out=lines.append) == 1
    finally:
        started.close()
    assert lines == [f"csi-wasm: the running driver could not collect: {shown}"]


def test_a_driver_that_does_not_answer_is_reported_not_bypassed(store: ModuleStore) -> None:
    stuck = socket.socket(socket.AF_UNIX)
    stuck.bind(os.fspath(store.root / SOCKET_NAME))
    stuck.listen()  # accepts connections, never answers (e.g. a frozen driver)
    try:
        with gc_requests.connect(store.root) as connection:
            assert connection is not None
            with pytest.raises(DriverUnreachable, match="did not answer within"):
                gc_requests.ask(connection, NOTHING, dry_run=False, timeout=0.01)
    finally:
        stuck.close()
