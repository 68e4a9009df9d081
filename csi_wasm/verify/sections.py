"""Read a Wasm module's import and export sections, without compiling it.

Only the section framing and the two sections' entries are decoded (LEB128 numbers,
names, the import descriptors' types so they can be skipped); every other section is
jumped over by its length. Structural validation is the validator's job (see
:mod:`csi_wasm.verify.structure`); this parser only has to be right on modules that
validate, and to fail with :class:`MalformedModule` (never anything else) on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC_AND_VERSION = b"\0asm\x01\x00\x00\x00"

IMPORT_SECTION = 2
EXPORT_SECTION = 7

SECTION_NAMES = {
    0: "custom",
    1: "type",
    2: "import",
    3: "function",
    4: "table",
    5: "memory",
    6: "global",
    7: "export",
    8: "start",
    9: "element",
    10: "code",
    11: "data",
    12: "data count",
    13: "tag",
}

# External kinds as the binary format numbers them.
KINDS = {0x00: "func", 0x01: "table", 0x02: "memory", 0x03: "global", 0x04: "tag"}

_REF_WITH_HEAP_TYPE = (0x63, 0x64)  # (ref null ht) / (ref ht), function references and GC
_SHARED_HEAP_TYPE = 0x65  # shared-everything-threads prefix
_LIMITS_HAS_MAX = 0x01
_LIMITS_PAGE_SIZE = 0x08  # custom-page-sizes: a page size exponent follows the limits


class MalformedModule(ValueError):
    """The bytes end early or hold something this parser does not know."""


@dataclass(frozen=True)
class Interface:
    """What a module imports and exports, in section order."""

    imports: tuple[tuple[str, str, str], ...]  # (module, name, kind)
    exports: tuple[tuple[str, str], ...]  # (name, kind)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview, start: int, end: int) -> None:
        self._data = data
        self.pos = start
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedModule(f"unexpected end at offset {self.pos}")
        value = self._data[self.pos]
        self.pos += 1
        return value

    def uleb(self, bits: int = 32) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= bits + 7:
                raise MalformedModule(f"LEB128 number too long at offset {self.pos}")
        if value >> bits:
            raise MalformedModule(f"LEB128 number out of range at offset {self.pos}")
        return value

    def skip_leb(self) -> None:
        """Skip a (signed or unsigned) LEB128 number of at most 64 bits."""
        for _ in range(10):
            if not self.byte() & 0x80:
                return
        raise MalformedModule(f"LEB128 number too long at offset {self.pos}")

    def name(self) -> str:
        length = self.uleb()
        if length > self.end - self.pos:
            raise MalformedModule(f"name runs past its section at offset {self.pos}")
        raw = bytes(self._data[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedModule(f"name is not UTF-8 at offset {self.pos}") from None

    def value_type(self) -> None:
        """Skip a value type: a one-byte type, or a reference type with a heap type."""
        if self.byte() in _REF_WITH_HEAP_TYPE:
            self.heap_type()

    def heap_type(self) -> None:
        if self._peek() == _SHARED_HEAP_TYPE:
            self.pos += 1
        self.skip_leb()  # s33: an abstract heap type (one byte) or a type index

    def limits(self) -> None:
        flags = self.byte()
        self.skip_leb()  # minimum (u32, or u64 for memory64 / table64)
        if flags & _LIMITS_HAS_MAX:
            self.skip_leb()
        if flags & _LIMITS_PAGE_SIZE:
            self.uleb()

    def _peek(self) -> int:
        if self.pos >= self.end:
            raise MalformedModule(f"unexpected end at offset {self.pos}")
        return self._data[self.pos]


def _skip_import_type(reader: _Reader, kind: int) -> None:
    if kind == 0x00:  # func: type index
        reader.uleb()
    elif kind == 0x01:  # table: reference type, limits
        reader.value_type()
        reader.limits()
    elif kind == 0x02:  # memory: limits
        reader.limits()
    elif kind == 0x03:  # global: value type, mutability
        reader.value_type()
        reader.byte()
    elif kind == 0x04:  # tag: attribute, type index
        reader.byte()
        reader.uleb()
    else:
        raise MalformedModule(f"unknown import kind 0x{kind:02x} at offset {reader.pos}")


def _kind(reader: _Reader) -> tuple[int, str]:
    code = reader.byte()
    kind = KINDS.get(code)
    if kind is None:
        raise MalformedModule(f"unknown external kind 0x{code:02x} at offset {reader.pos}")
    return code, kind


def _imports(reader: _Reader) -> tuple[tuple[str, str, str], ...]:
    found = []
    for _ in range(reader.uleb()):
        module = reader.name()
        name = reader.name()
        code, kind = _kind(reader)
        _skip_import_type(reader, code)
        found.append((module, name, kind))
    return tuple(found)


def _exports(reader: _Reader) -> tuple[tuple[str, str], ...]:
    found = []
    for _ in range(reader.uleb()):
        name = reader.name()
        _, kind = _kind(reader)
        reader.uleb()  # index
        found.append((name, kind))
    return tuple(found)


def read_interface(data: bytes | bytearray | memoryview) -> Interface:
    """The imports and exports of a module's binary; :class:`MalformedModule` if unreadable."""
    if bytes(data[: len(MAGIC_AND_VERSION)]) != MAGIC_AND_VERSION:
        raise MalformedModule("no Wasm magic and version 1 header")
    reader = _Reader(data, len(MAGIC_AND_VERSION), len(data))
    imports: tuple[tuple[str, str, str], ...] = ()
    exports: tuple[tuple[str, str], ...] = ()
    while reader.pos < reader.end:
        section_id = reader.byte()
        size = reader.uleb()
        start = reader.pos
        if size > reader.end - start:
            raise MalformedModule(f"section {section_id} runs past the end at offset {start}")
        reader.pos = start + size
        if section_id in (IMPORT_SECTION, EXPORT_SECTION):
            body = _Reader(data, start, start + size)
            if section_id == IMPORT_SECTION:
                imports = _imports(body)
            else:
                exports = _exports(body)
            if body.pos != body.end:
                raise MalformedModule(f"section {section_id} has trailing bytes at {body.pos}")
    return Interface(imports, exports)


def cut_short(data: bytes | bytearray | memoryview) -> str | None:
    """What is missing when the module ends inside a section; None if none runs past the end.

    Only the section framing is followed (id, size): for a message that says a module was
    cut short (an interrupted upload or copy), not a validation of its own.
    """
    reader = _Reader(data, len(MAGIC_AND_VERSION), len(data))
    try:
        while reader.pos < reader.end:
            start = reader.pos
            section_id = reader.byte()
            size = reader.uleb()
            remaining = reader.end - reader.pos
            if size > remaining:
                name = SECTION_NAMES.get(section_id, f"id {section_id}")
                return (
                    f"the {name} section at offset 0x{start:x} declares {size} bytes, "
                    f"{remaining} remain"
                )
            reader.pos += size
    except MalformedModule:
        return None  # ends inside a section header: the validator's reason says enough
    return None
