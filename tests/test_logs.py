"""Tests of csi_wasm.logs: one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csi_wasm import logs
from csi_wasm.logs import JsonFormatter, configure

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    urllib3_level = logging.getLogger("urllib3").level
    try:
        yield
    finally:
        logs.stop()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("urllib3").setLevel(urllib3_level)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("csi_wasm.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def _written(capsys: pytest.CaptureFixture[str]) -> str:
    """What reached stderr, once the writer's thread has written every queued line."""
    logs.flush()
    return capsys.readouterr().err


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_line_with_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info(
        "published %s", "vol-1", extra={"fields": {"volume_id": "vol-1", "bytes": 42, "ok": True}}
    )
    (entry,) = lines(stream)
    assert entry["msg"] == "published vol-1"
    assert entry["level"] == "info"
    assert entry["logger"] == "csi_wasm.test_logs"
    assert entry["volume_id"] == "vol-1"
    assert entry["bytes"] == 42
    assert entry["ok"] is True
    assert TIME.fullmatch(entry["time"])
    assert "traceback" not in entry


def test_record_without_fields(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.warning("plain")
    (entry,) = lines(stream)
    assert set(entry) == {"time", "level", "logger", "msg"}
    assert entry["level"] == "warning"


def test_non_json_values_become_strings(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("x", extra={"fields": {"path": Path("/var/lib/x"), "set": {1}}})
    (entry,) = lines(stream)
    assert entry["path"] == "/var/lib/x"
    assert entry["set"] == "{1}"


def test_fields_that_are_not_a_dict_are_ignored(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info("x", extra={"fields": ["a", "b"]})
    (entry,) = lines(stream)
    assert set(entry) == {"time", "level", "logger", "msg"}


def test_exception_has_traceback_field_on_one_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logger.exception("unexpected\nerror", extra={"fields": {"rpc": "NodePublishVolume"}})
    assert stream.getvalue().count("\n") == 1  # newlines inside are escaped
    (entry,) = lines(stream)
    assert entry["level"] == "error"
    assert entry["msg"] == "unexpected\nerror"
    assert entry["rpc"] == "NodePublishVolume"
    assert entry["traceback"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in entry["traceback"]
    assert "test_exception_has_traceback_field_on_one_line" in entry["traceback"]


def test_configure_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure("debug")
    logging.getLogger("csi_wasm.x").debug("hello", extra={"fields": {"k": "v"}})
    err = _written(capsys)
    (entry,) = [json.loads(line) for line in err.splitlines()]
    assert (entry["msg"], entry["level"], entry["k"]) == ("hello", "debug", "v")
    assert len(logging.getLogger().handlers) == 1


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("debug", ["debug", "info", "warning", "error"], []),
        ("info", ["info", "warning", "error"], ["debug"]),
        ("warning", ["warning", "error"], ["debug", "info"]),
        ("error", ["error"], ["debug", "info", "warning"]),
    ],
)
def test_configure_levels(
    capsys: pytest.CaptureFixture[str], level: str, shown: list[str], hidden: list[str]
) -> None:
    configure(level)
    log = logging.getLogger("csi_wasm.levels")
    log.debug("debug")
    log.info("info")
    log.warning("warning")
    log.error("error")
    got = [json.loads(line)["msg"] for line in _written(capsys).splitlines()]
    assert got == shown
    assert not set(got) & set(hidden)


def test_configure_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info")
    configure("info")
    logging.getLogger("csi_wasm.twice").info("once")
    assert len(_written(capsys).splitlines()) == 1


def test_configure_quietens_urllib3(capsys: pytest.CaptureFixture[str]) -> None:
    configure("debug")
    logging.getLogger("urllib3.connectionpool").debug("GET /token?secret=1")
    logging.getLogger("urllib3.connectionpool").warning("retrying")
    got = [json.loads(line)["msg"] for line in _written(capsys).splitlines()]
    assert got == ["retrying"]


@pytest.mark.parametrize("level", ["verbose", "INFO", "", "trace"])
def test_configure_refuses_unknown_level(level: str) -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure(level)


def test_levels_constant() -> None:
    assert logs.LEVELS == ("debug", "info", "warning", "error")


def test_lines_are_written_off_the_calling_thread_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info")
    writers: list[str] = []
    (running,) = logs._running
    writer = running.handler
    original = writer.emit

    def emit(record: logging.LogRecord) -> None:
        writers.append(threading.current_thread().name)
        original(record)

    writer.emit = emit  # type: ignore[method-assign]
    log = logging.getLogger("csi_wasm.order")
    for i in range(500):
        log.info("line %d", i, extra={"fields": {"i": i}})
    got = [json.loads(line) for line in _written(capsys).splitlines()]
    assert [entry["i"] for entry in got] == list(range(500))
    assert [entry["msg"] for entry in got[:2]] == ["line 0", "line 1"]
    assert set(writers) != {threading.current_thread().name}
    assert len(writers) == 500


def test_stop_writes_every_queued_line_and_later_lines_directly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info")
    log = logging.getLogger("csi_wasm.stop")
    for i in range(200):
        log.info("queued", extra={"fields": {"i": i}})
    logs.stop()
    log.info("after stop", extra={"fields": {"i": 200}})
    got = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [entry["i"] for entry in got] == list(range(201))
    assert got[-1]["msg"] == "after stop"


def test_traceback_survives_the_queue(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info")
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logging.getLogger("csi_wasm.queued").exception("failed %s", "here")
    (entry,) = [json.loads(line) for line in _written(capsys).splitlines()]
    assert entry["msg"] == "failed here"
    assert "ZeroDivisionError: division by zero" in entry["traceback"]


def test_arguments_are_read_when_logged_not_when_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info")
    state = ["before"]
    logging.getLogger("csi_wasm.args").info("state %s", state)
    state[0] = "after"
    (entry,) = [json.loads(line) for line in _written(capsys).splitlines()]
    assert entry["msg"] == "state ['before']"
