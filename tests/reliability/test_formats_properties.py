"""Property tests of the packaging formats: whatever a registry serves, the answer is a
module, or one of csi-wasm's errors (never an exception that would become INTERNAL).

Manifests, indexes and layer bodies are generated from near-valid shapes (real media
types, valid digests, odd values in every field) as well as from arbitrary JSON/bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from csi_wasm.errors import CsiWasmError
from csi_wasm.formats import (
    Unpack,
    choose_manifest,
    is_index,
    mediatypes,
    parse_image_manifest,
    select_format,
    sniff_unpack,
)
from csi_wasm.formats.body import unpack_body
from csi_wasm.formats.manifest import Descriptor
from csi_wasm.formats.tarball import extract_plugin

WHERE = "reg.example/x:v1"
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_media_types = st.sampled_from(
    [
        mediatypes.OCI_MANIFEST,
        mediatypes.DOCKER_MANIFEST,
        mediatypes.OCI_INDEX,
        mediatypes.DOCKER_MANIFEST_LIST,
        mediatypes.WASM_CONFIG_V0,
        mediatypes.WASM_LAYER,
        mediatypes.DOCKER_LAYER_TAR_GZIP,
        mediatypes.OCI_LAYER_TAR,
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.image.config.v1+json",
        "application/octet-stream",
        "",
    ]
)
_digest = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.sampled_from(["sha512:" + "a" * 128, "sha256:XYZ", ""]),
)
_descriptor = st.fixed_dictionaries(
    {
        "mediaType": _media_types | _json,
        "digest": _digest | _json,
        "size": st.integers(-1, 2**40) | _json,
    },
    optional={
        "platform": st.fixed_dictionaries(
            {},
            optional={
                "os": st.sampled_from(["wasip1", "wasip2", "linux", "unknown"]) | _json,
                "architecture": st.sampled_from(["wasm", "amd64", "unknown"]) | _json,
                "variant": _json,
            },
        )
        | _json,
        "annotations": st.dictionaries(
            st.sampled_from(["vnd.docker.reference.type", "org.opencontainers.image.title"]),
            st.sampled_from(["attestation-manifest", "plugin.wasm"]) | _json,
            max_size=2,
        )
        | _json,
    },
)
_manifest = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.just(2) | _json,
        "mediaType": _media_types | _json,
        "config": _descriptor | _json,
        "layers": st.lists(_descriptor, max_size=4) | _json,
        "manifests": st.lists(_descriptor, max_size=4) | _json,
        "artifactType": _media_types | _json,
    },
)


@given(_manifest | _json, _media_types)
@settings(max_examples=400, deadline=None)
def test_any_manifest_is_a_format_or_a_refusal(document: Any, content_type: str) -> None:
    body = json.dumps(document).encode()
    try:
        if is_index(content_type, body):
            child = choose_manifest(body, content_type, WHERE)
            assert isinstance(child, Descriptor)
            return
        manifest = parse_image_manifest(body, content_type, WHERE)
        package, layer = select_format(manifest, WHERE)
        assert layer in manifest.layers
        assert package.unpack in tuple(Unpack)
    except CsiWasmError as error:
        assert "\n" not in error.message


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "../../etc/passwd"
            else:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


_names = st.sampled_from(
    ["plugin.wasm", "./plugin.wasm", "/plugin.wasm", "../plugin.wasm", "a/plugin.wasm", "x"]
)
_kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE]
)
_contents = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b"\0asm\x01\0\0\0" + b),
    st.binary(max_size=64).map(lambda b: b"\0asm\x0d\0\x01\0" + b),
)
_bodies = st.one_of(
    st.binary(max_size=2048),
    _contents,
    st.lists(st.tuples(_names, _kinds, _contents), max_size=3).map(_tar),
)


@given(_bodies, st.booleans(), st.booleans())
@settings(max_examples=400, deadline=None)
def test_any_layer_body_is_a_module_or_a_refusal(
    body: bytes, compress: bool, truncate: bool
) -> None:
    if compress:
        body = gzip.compress(body, mtime=0)
    if truncate:
        body = body[: len(body) // 2]
    layer = Descriptor(mediatypes.OCI_LAYER_TAR, "sha256:" + "0" * 64, len(body))
    unpackers: list[Callable[[io.BytesIO], tuple[str, int]]] = [
        lambda out: extract_plugin(io.BytesIO(body), out, limit=4096, where=WHERE),
        lambda out: unpack_body(io.BytesIO(body), out, limit=4096, where=WHERE),
    ]
    for unpack in unpackers:
        out = io.BytesIO()
        try:
            digest, size = unpack(out)
        except CsiWasmError as error:
            assert "\n" not in error.message
            continue
        assert out.getvalue().startswith(b"\0asm\x01\0\0\0")
        assert size == len(out.getvalue()) <= 4096
        assert len(digest) == 64
    try:
        sniff_unpack(body[:512], layer, WHERE)
    except CsiWasmError as error:
        assert "\n" not in error.message
