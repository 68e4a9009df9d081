"""Structural validation by wasmtime's validator, and the facts of a module file.

``Module.validate`` runs the full validation of the core specification (and of the
proposals wasmtime enables by default) without compiling anything. The import and
export lists come from our own section reader, which costs a jump per section.
"""

from __future__ import annotations

import atexit
import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from csi_wasm.verify.facts import ModuleFacts
from csi_wasm.verify.sections import MalformedModule, read_interface

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


def structure_error(module: bytes | bytearray) -> str | None:
    """The validator's reason ``module`` is not a valid module; None when it is."""
    import wasmtime  # noqa: PLC0415 - see _shared_engine

    try:
        wasmtime.Module.validate(_shared_engine(), module)
    except wasmtime.WasmtimeError as error:
        reason = " ".join(str(error).split())
        return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON] + "..."
    return None


def facts_of(module: bytes | bytearray) -> ModuleFacts:
    """Validate ``module`` and read its imports and exports."""
    error = structure_error(module)
    try:
        interface = read_interface(module)
    except MalformedModule as malformed:
        # The validator accepted what the reader cannot follow (a proposal's encoding
        # it does not know): refuse it rather than judge a module we cannot read.
        return ModuleFacts.of(len(module), (), (), error or f"unreadable sections: {malformed}")
    return ModuleFacts.of(len(module), interface.exports, interface.imports, error)


def read_facts(path: Path) -> ModuleFacts:
    """:func:`facts_of` the module file at ``path`` (read once, whole)."""
    return facts_of(path.read_bytes())
