"""Structured logging: one JSON object per line on stderr.

Call sites pass their fields as ``extra={"fields": {...}}``. Values are logged as
given, so callers never pass secrets: requests are summarised by
:func:`csi_wasm.server.rpc.summarise`, which never reads the secrets field.

The caller only queues the record: formatting and the blocking write to stderr happen
on a thread of their own, so a log line never holds up the gRPC server's event loop
(one per RPC). :func:`flush` waits until every queued line is written.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from typing import Any

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _Writer:
    """The thread that formats queued records and writes them to stderr, in order."""

    def __init__(self) -> None:
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(JsonFormatter())
        # SimpleQueue: a put is one C call, no Python lock or condition on the caller's side.
        self.queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while (item := self.queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()  # a flush: every record queued before it is written
            else:
                self.handler.handle(item)

    def flush(self) -> None:
        written = threading.Event()
        self.queue.put(written)
        written.wait()

    def stop(self) -> None:
        self.queue.put(None)  # after the records queued so far
        self._thread.join()


class _Enqueue(logging.Handler):
    """Hands the record, unformatted, to the writer's thread."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        # Fix the message now: its arguments may change after the call returns.
        record.msg = record.getMessage()
        record.args = None
        self.writer.queue.put(record)


_running: list[_Writer] = []  # the configured writer, if any


def configure(level: str = "info") -> None:
    if level not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    stop()
    writer = _Writer()
    _running.append(writer)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(writer)]
    root.setLevel(_LEVELS[level])
    # urllib3 logs full URLs with query strings (token realms); keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def flush() -> None:
    """Return once every line logged so far has been written (the driver's stop calls it)."""
    for writer in _running:
        writer.flush()


def stop() -> None:
    """Write what is queued and end the writer's thread (at exit; before a new configure).

    Lines logged afterwards are written directly, on the caller's thread.
    """
    while _running:
        writer = _running.pop()
        root = logging.getLogger()
        root.handlers[:] = [writer.handler if isinstance(h, _Enqueue) else h for h in root.handlers]
        writer.stop()


atexit.register(stop)

LEVELS = tuple(_LEVELS)
