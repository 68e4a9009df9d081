"""Structural validation by wasmtime's validator, and the facts of a module file.

``Module.validate`` runs the full validation of the core specification (and of the
proposals wasmtime enables by default) without compiling anything. The import and
export lists come from our own section reader, which costs a jump per section.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import mmap
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from csi_wasm.verify.facts import ModuleFacts
from csi_wasm.verify.sections import MalformedModule, cut_short, read_interface

if TYPE_CHECKING:
    import wasmtime

_MAX_REASON = 300  # a validator message is one line; keep a pathological one short

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


def _shared_engine() -> wasmtime.Engine:
    global _engine  # noqa: PLW0603 - one engine per process, made on first use
    import wasmtime  # noqa: PLC0415 - 0.3 s to import: only when a module is validated

    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            # One core per validation, on the pull's own thread: a parallel one (about a
            # third faster on 2 cores) would start a pool of threads that never ends and
            # compete with the node's workloads beyond the puller's bound on parallel pulls.
            config.parallel_compilation = False
            _engine = wasmtime.Engine(config)
            # Freed before interpreter teardown, which would have unloaded its library.
            atexit.register(_engine.close)
        return _engine


@functools.cache
def validator() -> str:
    """The validator and its version, kept with every verdict: another may judge otherwise."""
    import importlib.metadata  # noqa: PLC0415 - 0.1 s to import: keep `--help` fast

    return f"wasmtime {importlib.metadata.version('wasmtime')}"


def structure_error(module: bytes | bytearray | mmap.mmap) -> str | None:
    """The validator's reason ``module`` is not a valid module; None when it is."""
    import wasmtime  # noqa: PLC0415 - see _shared_engine
    from wasmtime import _ffi  # noqa: PLC0415

    # wasmtime's Module.validate copies its input first (64 MiB: 50 ms of the 50 ms it
    # takes on a module of custom sections). A writable buffer (a bytearray, a private
    # mapping of the file) is handed to the same C function in place instead.
    writable = module if not isinstance(module, bytes) else bytearray(module)
    length = len(writable)
    if length == 0:
        writable = bytearray(1)  # ctypes cannot point into an empty buffer
    view = (ctypes.c_uint8 * len(writable)).from_buffer(writable)
    try:
        error = _ffi.wasmtime_module_validate(_shared_engine().ptr(), view, length)
    finally:
        del view  # a mapping cannot be closed while ctypes points into it
    if not error:
        return None
    reason = " ".join(str(wasmtime.WasmtimeError._from_ptr(error)).split())
    return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON] + "..."


def facts_of(module: bytes | bytearray | mmap.mmap) -> ModuleFacts:
    """Validate ``module`` and read its imports and exports."""
    error = structure_error(module)
    with memoryview(module) as view:
        if error is not None and "end-of-file" in error:
            missing = cut_short(view)
            error = f"{error}; the module is cut short: {missing}" if missing else error
    try:
        with memoryview(module) as view:
            interface = read_interface(view)
    except MalformedModule as malformed:
        # The validator accepted what the reader cannot follow (a proposal's encoding
        # it does not know): refuse it rather than judge a module we cannot read.
        return ModuleFacts.of(len(module), (), (), error or f"unreadable sections: {malformed}")
    return ModuleFacts.of(len(module), interface.exports, interface.imports, error)


def read_facts(path: Path) -> ModuleFacts:
    """:func:`facts_of` the module file at ``path``, validated where the page cache holds it.

    A private mapping (copy on write, never written) costs no copy and reads only the
    pages the validator looks at: the bytes of a custom section are never touched.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return facts_of(b"")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    with mapped:
        return facts_of(mapped)
