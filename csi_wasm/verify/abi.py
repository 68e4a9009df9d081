"""The verdict: may a module with these facts be served to a volume asking for an ABI?

The proxy-wasm rules are what Envoy's host (proxy-wasm-cpp-host) needs to start a
module: a function export ``proxy_abi_version_<v>`` of a version it implements, a
memory, an allocator export (``malloc``, else ``proxy_on_memory_allocate``), and
imports only from the modules it provides.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from csi_wasm.errors import InvalidModule
from csi_wasm.verify.facts import ABI_EXPORT_PREFIX, ModuleFacts


class Abi(enum.Enum):
    PROXY_WASM = "proxy-wasm"  # Envoy, Istio: structure and the proxy-wasm ABI
    ANY = "any"  # other Wasm hosts: structure only


KNOWN_ABI_VERSIONS = ("0.1.0", "0.2.0", "0.2.1")
ALLOCATORS = ("malloc", "proxy_on_memory_allocate")
HOST_MODULES = ("env", "wasi_snapshot_preview1", "wasi_unstable")

# The fixed set of InvalidModule.reason values.
REASONS = (
    "structure",
    "no_abi_export",
    "unknown_abi_version",
    "no_memory",
    "no_allocator",
    "foreign_import",
)

_LISTED = 8  # names a message lists before "and N more"


def judge(facts: ModuleFacts, abi: Abi, where: str = "the module") -> None:
    """Raise :class:`InvalidModule` naming what ``facts`` lack for ``abi``."""
    if facts.structure_error is not None:
        raise InvalidModule(
            f"{where} is not a valid WebAssembly module: {facts.structure_error}; "
            "rebuild it or check that the reference names the right module",
            "structure",
        )
    if abi is Abi.PROXY_WASM:
        _judge_proxy_wasm(facts, where)


def _judge_proxy_wasm(facts: ModuleFacts, where: str) -> None:
    prefix = f"{where} is not a proxy-wasm module Envoy can load:"
    hint = "build it with a proxy-wasm SDK, or set the volume attribute abi: any for other hosts"
    if not facts.abi_versions:
        raise InvalidModule(
            f"{prefix} it exports no {ABI_EXPORT_PREFIX}* function; "
            f"found: {_names(name for name, _ in facts.exports)}; {hint}",
            "no_abi_export",
        )
    if not set(facts.abi_versions) & set(KNOWN_ABI_VERSIONS):
        announced = _names(ABI_EXPORT_PREFIX + v.replace(".", "_") for v in facts.abi_versions)
        raise InvalidModule(
            f"{prefix} it exports {announced}, an ABI version Envoy does not implement "
            f"(known: {', '.join(KNOWN_ABI_VERSIONS)}); rebuild it with a released proxy-wasm SDK",
            "unknown_abi_version",
        )
    foreign = [(m, n) for m, n, _ in facts.imports if m not in HOST_MODULES]
    if foreign:
        raise InvalidModule(
            f"{prefix} it imports {_names(f'{m}.{n}' for m, n in foreign)}, but a proxy-wasm "
            f"host provides only the modules {', '.join(HOST_MODULES)}; "
            "link those dependencies into the module",
            "foreign_import",
        )
    exported_memory = any(kind == "memory" for _, kind in facts.exports)
    imported_memory = any(kind == "memory" for _, _, kind in facts.imports)
    if not (exported_memory or imported_memory):
        raise InvalidModule(
            f"{prefix} it has no memory (neither exported nor imported) for the host to "
            "exchange data through; export its memory",
            "no_memory",
        )
    functions = {name for name, kind in facts.exports if kind == "func"}
    if not functions & set(ALLOCATORS):
        raise InvalidModule(
            f"{prefix} it exports no allocator function ({' or '.join(ALLOCATORS)}); "
            "export one (proxy-wasm SDKs do)",
            "no_allocator",
        )


def _names(names: Iterable[str]) -> str:
    listed = list(names)
    if not listed:
        return "nothing"
    shown = ", ".join(listed[:_LISTED])
    more = len(listed) - _LISTED
    return f"{shown} and {more} more" if more > 0 else shown
