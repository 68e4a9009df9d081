"""Build valid WebAssembly modules of a chosen size in pure Python.

Each module has one exported function ``seed`` (``() -> i32``) returning a number
derived from the seed, a custom section ``csi-wasm.seed`` holding the seed text, and a
custom section ``csi-wasm.pad`` of pseudo-random (incompressible) bytes that brings
the module to the requested size.  Same ``(size, seed)``, same bytes; different seed,
different bytes.  All LEB128 numbers use their shortest encoding.

By default a module is also what a proxy-wasm host (Envoy) accepts: it exports its
memory, ``proxy_abi_version_0_2_1`` and ``malloc``. ``proxy_wasm=False`` leaves
those out (a plain module, valid for ``abi: any`` only).  :func:`from_wat` assembles
hand-written modules with wabt's ``wat2wasm``.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
import subprocess
import tempfile
from pathlib import Path

WASM_MAGIC = b"\0asm"
WASM_VERSION = b"\x01\x00\x00\x00"
EXPORT_NAME = "seed"
ABI_EXPORT = "proxy_abi_version_0_2_1"
ALLOCATOR_EXPORT = "malloc"
MEMORY_EXPORT = "memory"
SEED_SECTION = "csi-wasm.seed"
PAD_SECTION = "csi-wasm.pad"

_I32 = 0x7F
_FUNC_TYPE = 0x60
_EXPORT_FUNC = 0x00
_EXPORT_MEMORY = 0x02
_I32_CONST = 0x41
_END = 0x0B


def uleb128(value: int) -> bytes:
    if value < 0:
        raise ValueError("uleb128 of a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _name(text: str) -> bytes:
    raw = text.encode("utf-8")
    return uleb128(len(raw)) + raw


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + uleb128(len(payload)) + payload


def _vec(items: list[bytes]) -> bytes:
    return uleb128(len(items)) + b"".join(items)


def seed_value(seed: str) -> int:
    """What the module's exported ``seed`` function returns (a signed i32)."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    value: int = struct.unpack("<i", digest[:4])[0]
    return value


def _functype(params: list[int], results: list[int]) -> bytes:
    return (
        bytes([_FUNC_TYPE])
        + _vec([bytes([p]) for p in params])
        + _vec([bytes([r]) for r in results])
    )


def _body(instructions: bytes) -> bytes:
    body = _vec([]) + instructions + bytes([_END])  # no locals
    return uleb128(len(body)) + body


def _export(name: str, kind: int, index: int) -> bytes:
    return _name(name) + bytes([kind]) + uleb128(index)


def _base_module(seed: str, filler: int, proxy_wasm: bool) -> bytes:
    # Types: 0 () -> i32 (seed), 1 () -> () (the ABI marker), 2 (i32) -> i32 (malloc).
    types = [_functype([], [_I32]), _functype([], []), _functype([_I32], [_I32])]
    bodies = [_body(bytes([_I32_CONST]) + sleb128(seed_value(seed)))]
    exports = [_export(EXPORT_NAME, _EXPORT_FUNC, 0)]
    if proxy_wasm:
        bodies += [_body(b""), _body(bytes([_I32_CONST]) + sleb128(1024))]
        exports += [
            _export(MEMORY_EXPORT, _EXPORT_MEMORY, 0),
            _export(ABI_EXPORT, _EXPORT_FUNC, 1),
            _export(ALLOCATOR_EXPORT, _EXPORT_FUNC, 2),
        ]
    sections = [
        _section(1, _vec(types if proxy_wasm else types[:1])),  # type
        _section(3, _vec([uleb128(index) for index in range(len(bodies))])),  # function
    ]
    if proxy_wasm:
        sections.append(_section(5, _vec([b"\x00" + uleb128(1)])))  # memory: min 1 page
    sections += [
        _section(7, _vec(exports)),  # export
        _section(10, _vec(bodies)),  # code
        _section(0, _name(SEED_SECTION) + seed.encode("utf-8") + b"\0" * filler),  # custom
    ]
    return WASM_MAGIC + WASM_VERSION + b"".join(sections)


def _pad_payload_len(room: int) -> int | None:
    """Payload length P of a custom section taking exactly ``room`` bytes, or None.

    A section is ``id (1 byte) + uleb128(P) + P bytes``; at the boundaries of the
    LEB128 width (e.g. room=130) no shortest-encoded P fits.
    """
    name_len = len(_name(PAD_SECTION))
    for width in range(1, 6):
        payload = room - 1 - width
        if payload >= name_len and len(uleb128(payload)) == width:
            return payload
    return None


def min_module_size(seed: str, *, proxy_wasm: bool = True) -> int:
    """The smallest size :func:`make_module` can hit exactly for this seed."""
    return len(_base_module(seed, 0, proxy_wasm)) + 1 + 1 + len(_name(PAD_SECTION))


@functools.lru_cache(maxsize=16)
def make_module(size: int, seed: str, *, proxy_wasm: bool = True) -> bytes:
    """A valid Wasm module (binary format version 1) of exactly ``size`` bytes.

    When ``size`` is below :func:`min_module_size` the result is that minimum size
    instead (still valid, a hundred bytes or so plus the seed's length).
    """
    size = max(size, min_module_size(seed, proxy_wasm=proxy_wasm))
    for filler in range(8):
        base = _base_module(seed, filler, proxy_wasm)
        payload_len = _pad_payload_len(size - len(base))
        if payload_len is None:
            continue  # LEB128 width boundary: shift by one filler byte and retry
        name = _name(PAD_SECTION)
        rng = random.Random(f"csi-wasm:{seed}:{size}")
        pad = rng.randbytes(payload_len - len(name))
        module = base + _section(0, name + pad)
        assert len(module) == size
        return module
    raise AssertionError(f"cannot build a module of {size} bytes")  # pragma: no cover


def from_wat(text: str) -> bytes:
    """Assemble WebAssembly text with wabt's ``wat2wasm`` (an independent tool)."""
    with tempfile.TemporaryDirectory(prefix="wat-") as scratch:
        source, binary = Path(scratch, "m.wat"), Path(scratch, "m.wasm")
        source.write_text(text)
        done = subprocess.run(
            ["wat2wasm", "--enable-all", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ValueError(f"wat2wasm refused the module: {done.stderr.strip()}")
        return binary.read_bytes()


def split_sections(module: bytes) -> list[tuple[int, bytes]]:
    """A module's sections as (id, payload), in order (for building broken variants)."""
    sections, pos = [], len(WASM_MAGIC + WASM_VERSION)
    while pos < len(module):
        section_id, pos = module[pos], pos + 1
        size = shift = 0
        while True:
            byte, pos = module[pos], pos + 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sections.append((section_id, module[pos : pos + size]))
        pos += size
    return sections


def join_sections(sections: list[tuple[int, bytes]]) -> bytes:
    """The module :func:`split_sections` took apart, possibly rearranged."""
    return WASM_MAGIC + WASM_VERSION + b"".join(_section(i, payload) for i, payload in sections)


def make_code_module(size: int, seed: str) -> bytes:
    """A proxy-wasm module of about ``size`` bytes that is nearly all code.

    What a compiled filter looks like to a validator: thousands of functions whose
    bodies load, store, add, branch and call (a custom-padded :func:`make_module` is
    nearly free to validate). For benchmarks; the bytes vary with ``seed``.
    """
    rng = random.Random(f"csi-wasm-code:{seed}:{size}")
    pattern_count = 200  # per function: ~4 KiB bodies

    def body() -> bytes:
        code = bytearray()
        for _ in range(pattern_count):
            code += b"\x20\x00"  # local.get 0
            code += bytes([_I32_CONST]) + sleb128(rng.randrange(-(2**31), 2**31))
            code += b"\x6a\x22\x01"  # i32.add; local.tee 1
            code += b"\x28\x02" + uleb128(rng.randrange(1 << 12))  # i32.load align=4 offset
            code += b"\x20\x01\x36\x02\x00"  # local.get 1; i32.store
            code += b"\x02\x40\x20\x00\x0d\x00\x0b"  # block; local.get 0; br_if 0; end
            code += b"\x20\x01\x10\x00\x1a"  # local.get 1; call 0 (malloc); drop
        body = _vec([uleb128(1) + bytes([_I32])]) + bytes(code) + bytes([_END])  # 1 local
        return uleb128(len(body)) + body

    # Function 0 is malloc (i32) -> i32, 1 the ABI marker, 2.. the bulk (param i32).
    types = [_functype([_I32], [_I32]), _functype([], []), _functype([_I32], [])]
    bodies = [_body(bytes([_I32_CONST]) + sleb128(1024)), _body(b"")]
    kinds = [uleb128(0), uleb128(1)]
    pool = [body() for _ in range(8)]  # repeated: building 64 MiB body by body takes long
    total = 0
    while total < size:
        bodies.append(pool[len(bodies) % len(pool)])
        kinds.append(uleb128(2))
        total += len(bodies[-1])
    exports = [
        _export(MEMORY_EXPORT, _EXPORT_MEMORY, 0),
        _export(ABI_EXPORT, _EXPORT_FUNC, 1),
        _export(ALLOCATOR_EXPORT, _EXPORT_FUNC, 0),
    ]
    sections = [
        _section(1, _vec(types)),
        _section(3, _vec(kinds)),
        _section(5, _vec([b"\x00" + uleb128(1)])),
        _section(7, _vec(exports)),
        _section(10, _vec(bodies)),
    ]
    return WASM_MAGIC + WASM_VERSION + b"".join(sections)
