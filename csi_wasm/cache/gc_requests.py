"""``csi-wasm gc`` beside a running ``serve``: the driver collects, seeing its own pins.

A publish pins the module it picked until its volume record is written, in the
driver's memory (:mod:`csi_wasm.cache.store`). A collector in another process cannot
see those pins; evicting such a module would make that publish's bind mount fail.
So ``serve`` listens on ``<root>/gc.sock`` (a unix socket, 0600), and ``csi-wasm gc``
asks it to collect with the budget given on gc's command line: the collection runs in
the driver, under the same locks, pins and pin sources (prefetch list, catalog) as
its own, and gc prints the report it gets back. With no driver listening (none
running, or a socket left by one that crashed: connecting is refused), gc collects
by itself, as nothing holds pins then.

Why not pins on disk, which a gc of its own could read: a pin is on the warm
publish path (one lock, one utime now); a pin file adds a create and an unlink
per publish, plus a crash clean-up, and a file alone still leaves a window between
the collector's rename of a victim and its reading of the pins, which only a lock
shared across processes on every pin would close. Asking the driver costs the
publish path nothing, and the one collection algorithm stays the one that is tested
against concurrent pins.

The hand-over has one race, closed by ``<root>/.lock``: gc takes the lock, then tries
the socket, and keeps the lock for a collection of its own if nobody answers. The
driver binds the socket, then takes and releases the lock once before it serves a
publish. So a driver that starts during a lone gc waits for it, and a gc that
starts later finds the socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from csi_wasm.cache.store import ModuleStore
from csi_wasm.faults import FaultLog, disk_fault, explain, naming
from csi_wasm.settings import CacheSettings

log = logging.getLogger(__name__)

SOCKET_NAME = "gc.sock"
ANSWER_TIMEOUT = 300.0  # a collection may wait for another one and delete large modules
_REQUEST_TIMEOUT = 10.0  # a client that sends nothing does not hold the driver's listener
_MAX_MESSAGE = 1024 * 1024

# (settings, dry run) -> the report, as JSON data (see csi_wasm.cache.gc.CacheCollector)
Collect = Callable[[CacheSettings, bool], dict[str, Any]]


class DriverUnreachable(Exception):
    """A driver listens on the socket but did not answer properly."""


@contextlib.contextmanager
def _socket_address(root: Path) -> Iterator[str]:
    """An address for ``<root>/gc.sock`` that fits a sockaddr_un, however long ``root`` is."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


# the driver's side


class GcListener:
    """Answers ``csi-wasm gc`` on ``<root>/gc.sock`` by running ``collect``."""

    def __init__(self, store: ModuleStore, collect: Collect) -> None:
        self._path = store.root / SOCKET_NAME
        self._collect = collect
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="gc-requests", daemon=True)
        try:
            _remove_stale(self._path)
            with _socket_address(store.root) as address:
                self._socket.bind(address)
            os.chmod(self._path, 0o600)
            self._socket.listen(4)
        except BaseException:
            self._socket.close()
            raise
        # A lone ``csi-wasm gc`` that began before the bind holds the lock: let it finish
        # before any publish can pin (see the module docstring).
        with store.exclusive():
            pass

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._socket.close()
        self._path.unlink(missing_ok=True)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _serve(self) -> None:
        accepts = FaultLog(log, "accepting gc requests")  # out of descriptors: one line
        while not self._closed.is_set():
            try:
                with naming(self._path):
                    connection, _ = self._socket.accept()
            except OSError as error:
                if self._closed.is_set():
                    return
                accepts.failed(error)
                self._closed.wait(1.0)
                continue
            accepts.succeeded()
            with connection:
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(_REQUEST_TIMEOUT)
            request = json.loads(_read_all(connection))
            settings = CacheSettings(max_bytes=int(request["max_bytes"]), ttl=float(request["ttl"]))
            dry_run = bool(request.get("dry_run", False))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("gc requests: unreadable request", extra={"fields": {"error": str(error)}})
            return
        try:
            report = self._collect(settings, dry_run)
        except Exception as error:  # told to gc; a bug is logged here with its traceback
            if isinstance(error, OSError) and disk_fault(error):
                shown = explain(error)  # the root's fault, named: gc prints it as its one line
                log.warning(
                    "gc requested by csi-wasm gc failed", extra={"fields": {"error": shown}}
                )
            else:
                shown = f"{type(error).__name__}: {error}"
                log.exception("gc requested by csi-wasm gc failed")
            answer: dict[str, object] = {"error": shown}
        else:
            answer = {"report": report}
        connection.settimeout(_REQUEST_TIMEOUT)
        with contextlib.suppress(OSError):  # gc gave up waiting: nothing to tell
            connection.sendall(json.dumps(answer).encode())


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{path} exists and is not a socket; remove it")
    path.unlink()


# csi-wasm gc's side


@contextlib.contextmanager
def connect(root: Path) -> Iterator[socket.socket | None]:
    """A connection to the driver serving ``root``; None when no driver listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with sock:
        try:
            with _socket_address(root) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            yield None
            return
        except OSError as error:
            raise DriverUnreachable(
                f"cannot reach the driver at {root / SOCKET_NAME} ({error.strerror})"
            ) from None
        yield sock


def ask(
    connection: socket.socket,
    settings: CacheSettings,
    *,
    dry_run: bool,
    timeout: float = ANSWER_TIMEOUT,
) -> dict[str, Any]:
    """Have the driver on ``connection`` collect with ``settings``; its report (JSON data)."""
    request = {"max_bytes": settings.max_bytes, "ttl": settings.ttl, "dry_run": dry_run}
    try:
        connection.settimeout(timeout)
        connection.sendall(json.dumps(request).encode())
        connection.shutdown(socket.SHUT_WR)
        answer = json.loads(_read_all(connection))
    except TimeoutError:
        raise DriverUnreachable(
            f"the running driver did not answer within {timeout:.0f}s; it may still be collecting"
        ) from None
    except (OSError, ValueError) as error:
        raise DriverUnreachable(f"the running driver did not answer properly ({error})") from None
    report = answer.get("report") if isinstance(answer, dict) else None
    if not isinstance(report, dict):
        problem = answer.get("error") if isinstance(answer, dict) else None
        shown = problem if isinstance(problem, str) else repr(answer)
        raise DriverUnreachable(f"the running driver could not collect: {shown}")
    return report


def _read_all(connection: socket.socket) -> bytes:
    """Everything until the peer closes its side, bounded."""
    chunks = []
    size = 0
    while chunk := connection.recv(65536):
        size += len(chunk)
        if size > _MAX_MESSAGE:
            raise ValueError("message too large")
        chunks.append(chunk)
    return b"".join(chunks)
