"""Packages ``csi-wasm push`` writes: the CNCF Wasm artifact and Istio's compat image.

* ``artifact`` (:mod:`.artifact`): an OCI image manifest, config
  ``application/vnd.wasm.config.v0+json`` (the fields of the CNCF TAG Runtime spec:
  ``created``, ``architecture: wasm``, ``os: wasip1``, ``layerDigests``) and one
  ``application/wasm`` layer, the module as it is, titled ``plugin.wasm``.
* ``compat`` (:mod:`.compat`): an OCI image (image config, ``rootfs.diff_ids``) with one
  ``tar+gzip`` layer holding ``plugin.wasm``, what Istio pulls for ``oci://`` URLs.

Both are reproducible: the same module and ``created`` give the same bytes, so pushing
a module again gives the same manifest digest (the ``sha256`` a pod spec pins).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from csi_wasm.formats import mediatypes
from csi_wasm.formats.tarball import MODULE_NAME

__all__ = ["BUILDERS", "Blob", "Package", "build_package", "compat_image", "wasm_artifact"]

WASM_ARCHITECTURE = "wasm"
WASM_OS = "wasip1"  # a core module (not a component), as the CNCF spec names it
TITLE_ANNOTATION = "org.opencontainers.image.title"
_MODULE_MODE = 0o444  # read-only, as the driver mounts it


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(document: Mapping[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, so equal documents are equal bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = field(repr=False)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return _digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        described = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        if self.annotations:
            described["annotations"] = dict(self.annotations)
        return described


@dataclass(frozen=True)
class Package:
    """A manifest and its blobs, ready to push (blobs first)."""

    format: str  # as --format names it
    media_type: str  # of the manifest
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def manifest(self) -> bytes:
        return _json(
            {
                "schemaVersion": 2,
                "mediaType": self.media_type,
                "config": self.config.descriptor(),
                "layers": [layer.descriptor() for layer in self.layers],
            }
        )

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)


def _timestamp(created: int) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wasm_artifact(module: bytes, created: int) -> Package:
    """The CNCF Wasm OCI artifact holding ``module``; ``created`` in Unix seconds."""
    # Titled, so that `oras pull` writes it to a file of that name.
    layer = Blob(mediatypes.WASM_LAYER, module, {TITLE_ANNOTATION: MODULE_NAME})
    config = {
        "created": _timestamp(created),
        "architecture": WASM_ARCHITECTURE,
        "os": WASM_OS,
        "layerDigests": [layer.digest],
    }
    return Package(
        "artifact",
        mediatypes.OCI_MANIFEST,
        Blob(mediatypes.WASM_CONFIG_V0, _json(config)),
        (layer,),
    )


def compat_image(module: bytes, created: int) -> Package:
    """Istio's compat image: one tar+gzip layer with ``plugin.wasm`` at its root."""
    tar = _module_tar(module, created)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=created) as compressed:
        compressed.write(tar)
    layer = Blob(mediatypes.OCI_LAYER_TAR_GZIP, buffer.getvalue())
    config = {
        "created": _timestamp(created),
        "architecture": WASM_ARCHITECTURE,
        "os": WASM_OS,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [_digest(tar)]},
    }
    return Package(
        "compat",
        mediatypes.OCI_MANIFEST,
        Blob(mediatypes.OCI_IMAGE_CONFIG, _json(config)),
        (layer,),
    )


def _module_tar(module: bytes, created: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MODULE_NAME)
        info.size = len(module)
        info.mode = _MODULE_MODE
        info.mtime = created
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(module))
    return buffer.getvalue()


BUILDERS: Mapping[str, Callable[[bytes, int], Package]] = {
    "artifact": wasm_artifact,
    "compat": compat_image,
}


def build_package(format_name: str, module: bytes, created: int) -> Package:
    """The package of ``format_name`` (a key of :data:`BUILDERS`) holding ``module``."""
    return BUILDERS[format_name](module, created)
