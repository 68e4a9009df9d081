"""Is a module one a Wasm host can load? Structure (wasmtime's validator) and ABI rules.

No gRPC, no cache: :func:`read_facts` reads a module file once, :func:`judge` gives
the verdict for an ABI from those facts (cheap, so each volume is judged for its own).

Signatures (cosign) live beside them: :mod:`.keys`, :mod:`.policy`, :mod:`.cosign`,
:mod:`.bundle` and :mod:`.signatures` (discovery and verdict).
"""

from csi_wasm.errors import InvalidModule
from csi_wasm.verify.abi import (
    ALLOCATORS,
    HOST_MODULES,
    KNOWN_ABI_VERSIONS,
    REASONS,
    Abi,
    judge,
)
from csi_wasm.verify.facts import ABI_EXPORT_PREFIX, ModuleFacts
from csi_wasm.verify.structure import facts_of, read_facts, structure_error, validator

__all__ = [
    "ABI_EXPORT_PREFIX",
    "ALLOCATORS",
    "HOST_MODULES",
    "KNOWN_ABI_VERSIONS",
    "REASONS",
    "Abi",
    "InvalidModule",
    "ModuleFacts",
    "facts_of",
    "judge",
    "read_facts",
    "structure_error",
    "validator",
]
