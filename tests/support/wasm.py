"""Build valid WebAssembly modules of a chosen size in pure Python.

Each module has one exported function ``seed`` (``() -> i32``) returning a number
derived from the seed, a custom section ``csi-wasm.seed`` holding the seed text, and a
custom section ``csi-wasm.pad`` of pseudo-random (incompressible) bytes that brings
the module to the requested size.  Same ``(size, seed)``, same bytes; different seed,
different bytes.  All LEB128 numbers use their shortest encoding.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct

WASM_MAGIC = b"\0asm"
WASM_VERSION = b"\x01\x00\x00\x00"
EXPORT_NAME = "seed"
SEED_SECTION = "csi-wasm.seed"
PAD_SECTION = "csi-wasm.pad"

_I32 = 0x7F
_FUNC_TYPE = 0x60
_EXPORT_FUNC = 0x00
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


def _base_module(seed: str, filler: int) -> bytes:
    functype = bytes([_FUNC_TYPE]) + _vec([]) + _vec([bytes([_I32])])
    body = _vec([]) + bytes([_I32_CONST]) + sleb128(seed_value(seed)) + bytes([_END])
    sections = [
        _section(1, _vec([functype])),  # type
        _section(3, _vec([uleb128(0)])),  # function
        _section(7, _vec([_name(EXPORT_NAME) + bytes([_EXPORT_FUNC]) + uleb128(0)])),  # export
        _section(10, _vec([uleb128(len(body)) + body])),  # code
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


def min_module_size(seed: str) -> int:
    """The smallest size :func:`make_module` can hit exactly for this seed."""
    return len(_base_module(seed, 0)) + 1 + 1 + len(_name(PAD_SECTION))


@functools.lru_cache(maxsize=16)
def make_module(size: int, seed: str) -> bytes:
    """A valid Wasm module (binary format version 1) of exactly ``size`` bytes.

    When ``size`` is below :func:`min_module_size` the result is that minimum size
    instead (still valid, a few dozen bytes plus the seed's length).
    """
    size = max(size, min_module_size(seed))
    for filler in range(8):
        base = _base_module(seed, filler)
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
