"""Tests of csi_wasm.formats.tarball.extract_plugin: plugin.wasm out of an untrusted layer."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import io
import tarfile
import zlib
from collections.abc import Iterable

import pytest
from support.oci import gzip_bytes, make_layer_tar
from support.wasm import make_module

from csi_wasm.errors import FailedPrecondition
from csi_wasm.formats.tarball import MODULE_NAME, extract_plugin

WHERE = "ghcr.io/acme/f:v1"
MIB = 1024 * 1024
LIMIT = 1 * MIB
MODULE = make_module(3000, "tarball")
MODULE_HEX = hashlib.sha256(MODULE).hexdigest()


def tar_of(entries: Iterable[tuple[str, bytes, bytes]]) -> bytes:
    """A tar whose entries are (name, tarfile type, data for files or link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload.decode()
                tar.addfile(info)
            elif kind == tarfile.REGTYPE:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


def extract(blob: bytes, limit: int = LIMIT) -> tuple[tuple[str, int], bytes]:
    out = io.BytesIO()
    result = extract_plugin(io.BytesIO(blob), out, limit=limit, where=WHERE)
    return result, out.getvalue()


def refused(blob: bytes, limit: int = LIMIT) -> str:
    out = io.BytesIO()
    with pytest.raises(FailedPrecondition) as info:
        extract_plugin(io.BytesIO(blob), out, limit=limit, where=WHERE)
    message = info.value.message
    assert WHERE in message
    assert "\n" not in message
    assert info.value.code == "FAILED_PRECONDITION"
    assert len(out.getvalue()) <= limit
    return message


def refused_writing_nothing(blob: bytes, limit: int = LIMIT) -> str:
    out = io.BytesIO()
    with pytest.raises(FailedPrecondition) as info:
        extract_plugin(io.BytesIO(blob), out, limit=limit, where=WHERE)
    assert out.getvalue() == b""
    return info.value.message


def streamed_gzip_tar(name: str, head: bytes, size: int, *, then: bytes = b"") -> bytes:
    """A tar.gz holding ``name``: ``head`` followed by zeros up to ``size`` bytes.

    Built by streaming into zlib, so a 50 MiB member never exists in memory. ``then``
    is appended raw (uncompressed tar bytes of further members) before the end blocks.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    parts = [compressor.compress(info.tobuf(format=tarfile.PAX_FORMAT) + head)]
    left = size - len(head)
    zeros = b"\0" * MIB
    while left > 0:
        parts.append(compressor.compress(zeros[: min(left, MIB)]))
        left -= MIB
    padding = (-size) % tarfile.BLOCKSIZE
    parts.append(compressor.compress(b"\0" * padding + then + b"\0" * (2 * tarfile.BLOCKSIZE)))
    parts.append(compressor.flush())
    return b"".join(parts)


def member_bytes(name: str, data: bytes) -> bytes:
    """One regular member's raw tar bytes (header + padded data), without end blocks."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * ((-len(data)) % 512)


@functools.cache
def zero_bomb_then_plugin() -> bytes:
    return streamed_gzip_tar("zeros", b"", 50 * MIB, then=member_bytes(MODULE_NAME, MODULE))


@functools.cache
def plugin_bomb() -> bytes:
    return streamed_gzip_tar(MODULE_NAME, MODULE[:8], 50 * MIB)


# the happy paths


@pytest.mark.parametrize(
    "name", ["plugin.wasm", "./plugin.wasm", "dir/plugin.wasm", "a/b/c/plugin.wasm"]
)
@pytest.mark.parametrize("compress", [False, True])
def test_extracts_plugin(name: str, compress: bool) -> None:
    blob = make_layer_tar({"README.md": b"hello", name: MODULE, "other.wasm": b"\0asm"})
    if compress:
        blob = gzip_bytes(blob)
    (module_hex, size), out = extract(blob)
    assert out == MODULE
    assert (module_hex, size) == (MODULE_HEX, len(MODULE))


def test_similar_names_are_not_taken() -> None:
    blob = make_layer_tar(
        {
            "plugin.wasm.bak": b"no",
            "xplugin.wasm": b"no",
            "plugin.wasm/x": b"no",
            "plugin.wasm": MODULE,
        }
    )
    assert extract(blob)[1] == MODULE


def test_first_regular_plugin_wins_after_a_symlink() -> None:
    other = make_module(200, "second")
    blob = tar_of(
        [
            ("plugin.wasm", tarfile.SYMTYPE, b"/etc/passwd"),
            ("d/plugin.wasm", tarfile.REGTYPE, MODULE),
            ("e/plugin.wasm", tarfile.REGTYPE, other),
        ]
    )
    assert extract(blob)[1] == MODULE


def test_module_spanning_several_chunks() -> None:
    module = make_module(2 * MIB + 12345, "big")
    (module_hex, size), out = extract(gzip_bytes(make_layer_tar({"plugin.wasm": module})), 3 * MIB)
    assert size == len(module)
    assert module_hex == hashlib.sha256(module).hexdigest()
    assert out == module


def test_module_exactly_at_limit_is_accepted() -> None:
    (_, size), out = extract(make_layer_tar({"plugin.wasm": MODULE}), limit=len(MODULE))
    assert size == len(MODULE)
    assert out == MODULE


def test_directory_entries_are_fine() -> None:
    blob = tar_of([("dir/", tarfile.DIRTYPE, b""), ("dir/plugin.wasm", tarfile.REGTYPE, MODULE)])
    assert extract(blob)[1] == MODULE


# links and odd members


@pytest.mark.parametrize(
    ("kind", "target", "word"),
    [
        (tarfile.SYMTYPE, b"/etc/shadow", "symlink"),
        (tarfile.SYMTYPE, b"real.wasm", "symlink"),
        (tarfile.LNKTYPE, b"real.wasm", "hardlink"),
    ],
)
def test_links_are_not_followed(kind: bytes, target: bytes, word: str) -> None:
    blob = tar_of([("real.wasm", tarfile.REGTYPE, MODULE), ("plugin.wasm", kind, target)])
    message = refused_writing_nothing(blob)
    assert "links are not followed" in message
    assert f"plugin.wasm ({word})" in message
    assert "no regular plugin.wasm" in message


def test_directory_named_plugin_wasm() -> None:
    message = refused_writing_nothing(tar_of([("plugin.wasm/", tarfile.DIRTYPE, b"")]))
    assert "(directory)" in message


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_special_file_named_plugin_wasm(kind: bytes) -> None:
    message = refused_writing_nothing(tar_of([("plugin.wasm", kind, b"")]))
    assert "(special file)" in message


@pytest.mark.parametrize(
    "name",
    [
        "../plugin.wasm",
        "/plugin.wasm",
        "/abs/dir/plugin.wasm",
        "a/../../plugin.wasm",
        "./../plugin.wasm",
    ],
)
@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.SYMTYPE])
def test_unsafe_paths_are_refused(name: str, kind: bytes) -> None:
    payload = MODULE if kind == tarfile.REGTYPE else b"x"
    message = refused_writing_nothing(tar_of([(name, kind, payload)]))
    assert "unsafe path" in message
    assert repr(name) in message


@pytest.mark.parametrize(
    "blob",
    [
        make_layer_tar({"README": b"x", "plugin.wasm.gz": b"y"}),
        make_layer_tar({}),
        gzip_bytes(make_layer_tar({"module.wasm": MODULE})),
    ],
)
def test_missing_plugin(blob: bytes) -> None:
    assert "does not contain a file named plugin.wasm" in refused_writing_nothing(blob)


# limits


def test_gzip_bomb_is_refused_by_the_limit() -> None:
    bomb = zero_bomb_then_plugin()
    assert len(bomb) < 200 * 1024  # 50 MiB of zeros compresses to almost nothing
    assert len(gzip.decompress(bomb)) > 50 * MIB
    message = refused_writing_nothing(bomb, LIMIT)
    assert "unpacks to more than" in message
    assert "--max-module-bytes" in message


def test_gzip_bomb_is_readable_under_a_big_enough_limit() -> None:
    """The same layer passes when the limit allows it: the refusal above is the limit."""
    _, out = extract(zero_bomb_then_plugin(), limit=50 * MIB)
    assert out == MODULE


def test_plain_tar_is_bounded_too() -> None:
    blob = make_layer_tar({"filler": b"\0" * (3 * MIB), "plugin.wasm": MODULE})
    assert "unpacks to more than" in refused_writing_nothing(blob, LIMIT)


def test_plugin_bomb_is_refused_before_writing() -> None:
    message = refused_writing_nothing(plugin_bomb(), LIMIT)
    assert f"holds a {50 * MIB}-byte plugin.wasm" in message
    assert f"over the {LIMIT}-byte limit" in message


def test_member_larger_than_limit() -> None:
    message = refused_writing_nothing(make_layer_tar({"plugin.wasm": MODULE}), len(MODULE) - 1)
    assert f"{len(MODULE)}-byte plugin.wasm" in message
    assert "--max-module-bytes" in message


# content and corruption


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"#!/bin/sh\necho hi\n", "not a WebAssembly module"),
        (b"", "not a WebAssembly module"),
        (b"\0as", "not a WebAssembly module"),
        (b"\0asm\x0d\0\x01\0" + b"\0" * 100, "version 0d000100"),
    ],
)
def test_non_wasm_content(content: bytes, hint: str) -> None:
    message = refused_writing_nothing(gzip_bytes(make_layer_tar({"plugin.wasm": content})))
    assert hint in message
    assert f"plugin.wasm in {WHERE}" in message


@pytest.mark.parametrize(
    "blob",
    [
        b"\x1f\x8b" + b"garbage" * 20,
        gzip_bytes(make_layer_tar({"plugin.wasm": MODULE}))[:300],
        MODULE,
        b"",
        b"not a tar at all, just some words" * 40,
    ],
)
def test_unreadable_archives(blob: bytes) -> None:
    assert "is not a readable tar archive" in refused(blob)


def test_truncated_inside_plugin() -> None:
    module = make_module(100_000, "trunc")
    blob = make_layer_tar({"plugin.wasm": module})
    message = refused(blob[: len(blob) // 2])
    assert "is not a readable tar archive" in message


class _FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_not_blamed_on_the_archive() -> None:
    layer = io.BytesIO(gzip_bytes(make_layer_tar({"plugin.wasm": make_module(4096, "full")})))
    with pytest.raises(OSError) as caught:
        extract_plugin(layer, _FullDisk(), limit=1 << 20, where="ref")
    assert caught.value.errno == errno.ENOSPC
