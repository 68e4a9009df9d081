"""A minimal OCI distribution client for tests, on plain ``requests``, and artifact builders.

Pushes blobs monolithically (``POST /blobs/uploads/`` then ``PUT ?digest=``) and
manifests with ``PUT /manifests/<ref>``; Basic auth when the registry has credentials.
It is deliberately independent of ``csi_wasm`` so tests check the driver against
something it did not write.

Builders:

* :func:`push_wasm_artifact` - the CNCF Wasm OCI artifact (config
  ``application/vnd.wasm.config.v0+json``, one ``application/wasm`` layer).
* :func:`push_compat_image` - Istio's "compat" image: one gzip'ed tar layer holding
  ``plugin.wasm``, in Docker v2 schema 2 or OCI image media types.
* :func:`push_custom_artifact` - any config type and layers (wasme, wasm-to-oci...).
* :func:`push_blob`, :func:`push_manifest`, :func:`push_index` - for hand-assembled
  (odd) manifests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urljoin

import requests

# -- media types ---------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_CONFIG = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"
OCTET_STREAM = "application/octet-stream"

#: What a client should send in ``Accept`` to get any single manifest or index back.
ACCEPT_ALL_MANIFESTS = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST])

COMPAT_WASM_PATH = "plugin.wasm"
Flavor = Literal["docker", "oci"]


class RegistryLike(Protocol):
    """What the pushers need from a registry (``support.registry.Registry`` fits)."""

    @property
    def host(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def auth(self) -> tuple[str, str] | None: ...


class PushError(RuntimeError):
    """The registry refused a push."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    platform: Mapping[str, str] | None = None
    artifact_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type is not None:
            d["artifactType"] = self.artifact_type
        if self.annotations is not None:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = dict(self.platform)
        return d


@dataclass(frozen=True)
class PushedModule:
    """What a test needs to know about a pushed Wasm module."""

    reference: str  # host/repo:tag
    manifest_digest: str  # sha256:...
    module_sha256: str  # hex, no "sha256:" prefix
    module_size: int
    repo: str = ""
    tag: str = ""
    manifest_media_type: str = ""
    manifest_size: int = 0
    config_media_type: str = ""
    layer_media_type: str = ""
    layer_digest: str = ""  # the blob holding the module (gzip'ed tar for compat images)
    tool: str = "support.oci"
    manifest: bytes = field(default=b"", repr=False)

    @property
    def host(self) -> str:
        return self.reference.split("/", 1)[0]

    @property
    def digest_reference(self) -> str:
        """``host/repo@sha256:...``."""
        return f"{self.host}/{self.repo}@{self.manifest_digest}"

    @property
    def module_digest(self) -> str:
        return "sha256:" + self.module_sha256

    def manifest_descriptor(self, platform: Mapping[str, str] | None = None) -> Descriptor:
        return Descriptor(
            self.manifest_media_type, self.manifest_digest, self.manifest_size, platform=platform
        )


# -- low-level HTTP ------------------------------------------------------------------


def _session(registry: RegistryLike) -> requests.Session:
    s = requests.Session()
    s.auth = registry.auth
    s.headers["User-Agent"] = "csi-wasm-tests/support.oci"
    return s


def _check(resp: requests.Response, *expected: int) -> requests.Response:
    if resp.status_code not in expected:
        raise PushError(
            f"{resp.request.method} {resp.url} -> {resp.status_code}: {resp.text[:500]}"
        )
    return resp


def blob_exists(registry: RegistryLike, repo: str, digest: str) -> bool:
    with _session(registry) as s:
        r = s.head(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30)
    return r.status_code == 200


def push_blob(
    registry: RegistryLike,
    repo: str,
    data: bytes,
    media_type: str = OCTET_STREAM,
    *,
    skip_existing: bool = True,
) -> Descriptor:
    """Upload ``data`` as a blob (monolithic POST + PUT); returns its descriptor."""
    digest = sha256_digest(data)
    desc = Descriptor(media_type, digest, len(data))
    with _session(registry) as s:
        if skip_existing:
            head = s.head(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30)
            if head.status_code == 200:
                return desc
        start = _check(s.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=30), 202)
        location = urljoin(f"{registry.url}/", start.headers["Location"])
        put = s.put(
            location,
            params={"digest": digest},
            data=data,
            headers={"Content-Type": OCTET_STREAM},
            timeout=300,
        )
        _check(put, 201)
        got = put.headers.get("Docker-Content-Digest")
        if got is not None and got != digest:
            raise PushError(f"registry stored blob as {got}, expected {digest}")
    return desc


def encode_manifest(manifest: Mapping[str, Any] | bytes) -> bytes:
    if isinstance(manifest, bytes):
        return manifest
    return json.dumps(manifest, separators=(",", ":")).encode("utf-8")


def push_manifest(
    registry: RegistryLike,
    repo: str,
    ref: str,
    manifest: Mapping[str, Any] | bytes,
    media_type: str | None = None,
) -> str:
    """PUT a manifest (dict, or exact bytes) under a tag or digest; returns its digest.

    ``media_type`` defaults to the manifest's own ``mediaType``.
    """
    body = encode_manifest(manifest)
    if media_type is None:
        if isinstance(manifest, bytes):
            media_type = str(json.loads(manifest)["mediaType"])
        else:
            media_type = str(manifest["mediaType"])
    digest = sha256_digest(body)
    with _session(registry) as s:
        r = s.put(
            f"{registry.url}/v2/{repo}/manifests/{ref}",
            data=body,
            headers={"Content-Type": media_type},
            timeout=30,
        )
    _check(r, 201)
    got = r.headers.get("Docker-Content-Digest")
    if got is not None and got != digest:
        raise PushError(f"registry stored manifest as {got}, expected {digest}")
    return digest


def delete_manifest(registry: RegistryLike, repo: str, digest: str) -> None:
    """DELETE a manifest by digest (the registry runs with deletes enabled)."""
    with _session(registry) as s:
        _check(s.delete(f"{registry.url}/v2/{repo}/manifests/{digest}", timeout=30), 202)


def get_manifest(
    registry: RegistryLike, repo: str, ref: str, accept: str = ACCEPT_ALL_MANIFESTS
) -> requests.Response:
    with _session(registry) as s:
        return s.get(
            f"{registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=30
        )


def get_blob(registry: RegistryLike, repo: str, digest: str) -> bytes:
    with _session(registry) as s:
        r = _check(s.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=300), 200)
    return r.content


# -- builders ------------------------------------------------------------------------


def wasm_config(module_digest: str, **extra: Any) -> dict[str, Any]:
    """A config for the CNCF Wasm OCI artifact (tag-runtime wasm-oci-artifact layout)."""
    config: dict[str, Any] = {
        "created": "2024-01-01T00:00:00Z",
        "author": "csi-wasm tests",
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [module_digest],
    }
    config.update(extra)
    return config


def push_wasm_artifact(
    registry: RegistryLike,
    repo: str,
    tag: str,
    module_bytes: bytes,
    *,
    config: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    layer_annotations: Mapping[str, str] | None = None,
    artifact_type: str | None = None,
) -> PushedModule:
    """Push a CNCF Wasm artifact: OCI image manifest, Wasm config, one ``application/wasm``
    layer holding the module bytes as they are."""
    module_digest = sha256_digest(module_bytes)
    layer = push_blob(registry, repo, module_bytes, WASM_LAYER)
    if layer_annotations is not None:
        layer = Descriptor(layer.media_type, layer.digest, layer.size, layer_annotations)
    config_bytes = encode_manifest(config if config is not None else wasm_config(module_digest))
    config_desc = push_blob(registry, repo, config_bytes, WASM_CONFIG)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.as_dict(),
        "layers": [layer.as_dict()],
    }
    if artifact_type is not None:
        manifest["artifactType"] = artifact_type
    if annotations is not None:
        manifest["annotations"] = dict(annotations)
    return _finish(
        registry,
        repo,
        tag,
        manifest,
        module_bytes,
        layer_digest=layer.digest,
        layer_media_type=WASM_LAYER,
        config_media_type=WASM_CONFIG,
    )


def make_layer_tar(files: Mapping[str, bytes], *, mode: int = 0o644) -> bytes:
    """An uncompressed, reproducible tar (fixed mtime, root owner) holding ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes, compresslevel: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=compresslevel, mtime=0)


def image_config(diff_ids: Sequence[str]) -> dict[str, Any]:
    """A minimal container image config (same JSON for Docker and OCI flavors)."""
    return {
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "COPY plugin.wasm /"}],
    }


COMPAT_MEDIA_TYPES: dict[Flavor, tuple[str, str, str]] = {
    # flavor: (manifest, config, layer)
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_TAR_GZIP),
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_TAR_GZIP),
}


def push_compat_image(
    registry: RegistryLike,
    repo: str,
    tag: str,
    module_bytes: bytes,
    flavor: Flavor = "docker",
    *,
    path_in_layer: str = COMPAT_WASM_PATH,
    extra_files: Mapping[str, bytes] | None = None,
) -> PushedModule:
    """Push Istio's compat image: one gzip'ed tar layer with ``plugin.wasm`` at its root.

    ``path_in_layer`` (e.g. ``./plugin.wasm``) and ``extra_files`` make variants.
    """
    manifest_type, config_type, layer_type = COMPAT_MEDIA_TYPES[flavor]
    files = {path_in_layer: module_bytes, **(extra_files or {})}
    tar = make_layer_tar(files)
    layer = push_blob(registry, repo, gzip_bytes(tar), layer_type)
    config = push_blob(
        registry, repo, encode_manifest(image_config([sha256_digest(tar)])), config_type
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.as_dict(),
        "layers": [layer.as_dict()],
    }
    return _finish(
        registry,
        repo,
        tag,
        manifest,
        module_bytes,
        layer_digest=layer.digest,
        layer_media_type=layer_type,
        config_media_type=config_type,
    )


def push_custom_artifact(
    registry: RegistryLike,
    repo: str,
    tag: str,
    config_type: str,
    layers: Sequence[tuple[bytes, str]],
) -> str:
    """Hand-assemble an OCI manifest, the way wasme, Gloo and wasm-to-oci lay theirs out.

    ``layers`` are (bytes, media type); the config is a small JSON of ``config_type``.
    Returns ``host/repo:tag``.
    """
    config = push_blob(registry, repo, encode_manifest({"type": "envoy_proxy"}), config_type)
    descriptors = [push_blob(registry, repo, data, media_type) for data, media_type in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.as_dict(),
        "layers": [d.as_dict() for d in descriptors],
    }
    push_manifest(registry, repo, tag, manifest, OCI_MANIFEST)
    return f"{registry.host}/{repo}:{tag}"


def push_index(
    registry: RegistryLike,
    repo: str,
    tag: str,
    manifests: Sequence[Descriptor],
    media_type: str = OCI_INDEX,
) -> str:
    """Push an image index / manifest list pointing at already-pushed manifests."""
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [d.as_dict() for d in manifests],
    }
    return push_manifest(registry, repo, tag, index, media_type)


def _finish(
    registry: RegistryLike,
    repo: str,
    tag: str,
    manifest: Mapping[str, Any],
    module_bytes: bytes,
    *,
    layer_digest: str,
    layer_media_type: str,
    config_media_type: str,
) -> PushedModule:
    body = encode_manifest(manifest)
    media_type = str(manifest["mediaType"])
    digest = push_manifest(registry, repo, tag, body, media_type)
    return PushedModule(
        reference=f"{registry.host}/{repo}:{tag}",
        manifest_digest=digest,
        module_sha256=hashlib.sha256(module_bytes).hexdigest(),
        module_size=len(module_bytes),
        repo=repo,
        tag=tag,
        manifest_media_type=media_type,
        manifest_size=len(body),
        config_media_type=config_media_type,
        layer_media_type=layer_media_type,
        layer_digest=layer_digest,
        manifest=body,
    )


def pushed_from_registry(
    registry: RegistryLike,
    repo: str,
    tag: str,
    module_bytes: bytes,
    *,
    tool: str,
) -> PushedModule:
    """Describe something another tool pushed, by reading its manifest back."""
    r = _check(get_manifest(registry, repo, tag), 200)
    body = r.content
    manifest = json.loads(body)
    media_type = str(manifest.get("mediaType") or r.headers["Content-Type"])
    layers = manifest.get("layers") or []
    return PushedModule(
        reference=f"{registry.host}/{repo}:{tag}",
        manifest_digest=sha256_digest(body),
        module_sha256=hashlib.sha256(module_bytes).hexdigest(),
        module_size=len(module_bytes),
        repo=repo,
        tag=tag,
        manifest_media_type=media_type,
        manifest_size=len(body),
        config_media_type=str(manifest.get("config", {}).get("mediaType", "")),
        layer_media_type=str(layers[0]["mediaType"]) if layers else "",
        layer_digest=str(layers[0]["digest"]) if layers else "",
        tool=tool,
        manifest=body,
    )
