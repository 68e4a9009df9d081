"""What a test caught in its log: the records as the driver's JSON lines, its warnings."""

from __future__ import annotations

import logging

import pytest

from csi_wasm.logs import JsonFormatter


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
