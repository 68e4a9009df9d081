"""The one place where csi-wasm errors become gRPC status codes, and every RPC is logged.

Each servicer method is a coroutine (the server is gRPC's asyncio server) wrapped by
:func:`handler`. It logs one JSON line per call (method, volume id, pod, digest, code,
duration; Probe only at debug level) and turns a :class:`~csi_wasm.errors.CsiWasmError`
into ``context.abort`` with its code. Any other exception is a bug: INTERNAL, with the
traceback in the log only.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from csi_wasm.attributes import pod_info
from csi_wasm.errors import CsiWasmError

log = logging.getLogger("csi_wasm.rpc")

# Told of every finished call: (method, code name, seconds). Metrics listen here.
CallObserver = Callable[[str, str, float], None]


class ObservedServicer:
    """Base of our servicers: holds who is told about finished calls."""

    def __init__(self, on_call: CallObserver | None = None) -> None:
        self.on_call = on_call


Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer", bound=ObservedServicer)
Context = grpc.aio.ServicerContext[Any, Any]
Method = Callable[[Servicer, Request, Context], Awaitable[Response]]

_notes: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("rpc_notes")


def note(**fields: Any) -> None:
    """Add fields (digest, cache hit...) to the current call's log line."""
    notes = _notes.get(None)
    if notes is not None:
        notes.update(fields)


def summarise(request: Any) -> dict[str, Any]:
    """The loggable fields of a request. Never reads ``secrets``."""
    fields: dict[str, Any] = {}
    volume_id = getattr(request, "volume_id", "")
    if volume_id:
        fields["volume_id"] = volume_id
    context = getattr(request, "volume_context", None)
    if context:
        pod = str(pod_info(context))
        if pod:
            fields["pod"] = pod
        if "url" in context:
            fields["url"] = context["url"]
    target = getattr(request, "target_path", "")
    if target:
        fields["target_path"] = target
    return fields


def status_of(error: CsiWasmError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]


def _log_call(level: int, name: str, fields: dict[str, Any]) -> None:
    # The record made directly: log.log would also look up the calling frame, which
    # the JSON line never shows; this runs on the event loop once per call.
    if log.isEnabledFor(level):
        log.handle(log.makeRecord(log.name, level, "", 0, name, (), None, extra={"fields": fields}))


def handler(method: Method[Servicer, Request, Response]) -> Method[Servicer, Request, Response]:
    name = method.__name__
    level = logging.DEBUG if name == "Probe" else logging.INFO

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Context) -> Response:
        started = time.monotonic()
        notes: dict[str, Any] = {}
        token = _notes.set(notes)
        code, message = "OK", ""
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:  # the caller went away, or the server is stopping
            code = "CANCELLED"
            raise
        except CsiWasmError as error:
            code, message = error.code, error.message
        except Exception as error:  # a bug: the caller gets a short line, the log the traceback
            code = "INTERNAL"
            message = (
                f"internal error in csi-wasm ({type(error).__name__}); "
                "the driver log has the details, please report it"
            )
            log.exception("unexpected error in %s", name, extra={"fields": summarise(request)})
        finally:
            _notes.reset(token)
            seconds = time.monotonic() - started
            fields = {
                "method": name,
                **summarise(request),
                **notes,
                "code": code,
                "duration_ms": round(seconds * 1000, 3),
            }
            if message:
                fields["error"] = message
            _log_call(level if code == "OK" else logging.WARNING, name, fields)
            if self.on_call is not None:
                self.on_call(name, code, seconds)
        await context.abort(grpc.StatusCode[code], message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper
