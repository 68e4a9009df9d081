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
import logging.handlers
import queue
import sys
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


class _Enqueue(logging.handlers.QueueHandler):
    """Queues the record itself, unformatted (the stdlib's formats it here, on the
    caller's thread, and drops the traceback)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Fix the message now: its arguments may change after the call returns.
        record.msg = record.getMessage()
        record.args = None
        return record


class _Writer:
    """The thread that formats queued records and writes them to stderr."""

    def __init__(self) -> None:
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(JsonFormatter())
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue()
        self.listener = logging.handlers.QueueListener(self.queue, self.handler)
        self.listener.start()


_running: list[_Writer] = []  # the configured writer, if any


def configure(level: str = "info") -> None:
    if level not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    stop()
    writer = _Writer()
    _running.append(writer)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(writer.queue)]
    root.setLevel(_LEVELS[level])
    # urllib3 logs full URLs with query strings (token realms); keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def flush() -> None:
    """Return once every line logged so far has been written (the driver's stop calls it)."""
    for writer in _running:
        writer.queue.join()  # the listener marks each record done once it is written


def stop() -> None:
    """Write what is queued and end the writer's thread (at exit; before a new configure).

    Lines logged afterwards are written directly, on the caller's thread.
    """
    while _running:
        writer = _running.pop()
        root = logging.getLogger()
        root.handlers[:] = [writer.handler if isinstance(h, _Enqueue) else h for h in root.handlers]
        writer.listener.stop()  # writes the records queued before it, then ends its thread


atexit.register(stop)

LEVELS = tuple(_LEVELS)
