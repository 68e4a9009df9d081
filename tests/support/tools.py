"""Push Wasm modules with independent tools: buildah, skopeo and oras-py.

These give the driver artifacts that *we* did not serialise.  What each produces
(distribution 2.8 registry, buildah 1.28.2, skopeo 1.9.3, oras-py 0.2.43):

* buildah ``--format docker``: Docker v2s2 manifest, config
  ``application/vnd.docker.container.image.v1+json`` (with ``container_config``, a
  ``io.buildah.version`` label and history ``created_by: /bin/sh``), one
  ``application/vnd.docker.image.rootfs.diff.tar.gzip`` layer whose tar holds just
  ``plugin.wasm`` (header mode 0o100644 - Go keeps the file-type bits - uid/gid 0,
  no directory entries, no ``./`` prefix).
* buildah ``--format oci``: OCI manifest with ``mediaType`` set, config
  ``application/vnd.oci.image.config.v1+json``, layer
  ``application/vnd.oci.image.layer.v1.tar+gzip`` (same tar), and manifest annotations
  ``org.opencontainers.image.base.digest`` / ``.base.name`` set to ``""``.
* oras-py: OCI manifest (``mediaType`` set) with the config media type and layer media
  type we ask for, the layer annotated ``org.opencontainers.image.title: <file name>``
  and an empty ``"annotations": {}`` on the manifest; JSON with ``", "``/``": "``
  separators.
* skopeo copy (no ``--format``): byte-for-byte the source manifest, Wasm artifacts
  included; ``--format oci`` converts a Docker image to OCI media types.

buildah/skopeo run with a private ``--root``/``--runroot``/``TMPDIR`` and explicit
``--creds``; containers/image still records digests in its global blob-info cache
(``/var/lib/containers/cache/blob-info-cache-v1.boltdb`` for root), which nothing
here can redirect and which is harmless.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import oras.client
import requests

from .oci import (
    COMPAT_WASM_PATH,
    WASM_CONFIG,
    WASM_LAYER,
    PushedModule,
    RegistryLike,
    encode_manifest,
    pushed_from_registry,
    sha256_digest,
    wasm_config,
)

BUILDAH = "/usr/bin/buildah"
SKOPEO = "/usr/bin/skopeo"
BuildahFormat = Literal["docker", "oci"]


class ToolError(RuntimeError):
    """An external tool failed."""


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        shown = " ".join(a if not a.startswith("--creds") else "--creds=***" for a in argv)
        raise ToolError(
            f"{shown} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def _creds(registry: RegistryLike) -> str | None:
    auth = registry.auth
    return None if auth is None else f"{auth[0]}:{auth[1]}"


def _require_alive(registry: RegistryLike) -> None:
    """Fail fast instead of letting a tool retry against a dead address."""
    try:
        r = requests.get(f"{registry.url}/v2/", timeout=5)
    except requests.ConnectionError as exc:
        raise ToolError(f"registry {registry.url} is not answering") from exc
    if r.status_code not in (200, 401):
        raise ToolError(f"registry {registry.url}/v2/ answered {r.status_code}")


class ContainersTools:
    """buildah and skopeo with private storage under ``workdir``.

    Locally committed buildah images are cached per (module sha256, format), so
    pushing the same module again (to another repo, tag or registry) only pays for
    the push.  Thread-safe.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.runroot = workdir / "runroot"
        self.tmp = workdir / "tmp"
        self.src = workdir / "src"
        for d in (self.root, self.runroot, self.tmp, self.src):
            d.mkdir(parents=True, exist_ok=True)
        # A private, empty auth file: never read or write the user's logins.  (buildah
        # refuses to run when REGISTRY_AUTH_FILE names a missing file.)
        auth_file = workdir / "auth.json"
        auth_file.write_text('{"auths": {}}\n')
        self.env = {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "REGISTRY_AUTH_FILE": str(auth_file),
        }
        self._images: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- buildah ------------------------------------------------------------------

    def buildah(self, *args: str) -> str:
        argv = [
            BUILDAH,
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            *args,
        ]
        return _run(argv, self.env)

    def build_compat(self, module_bytes: bytes, fmt: BuildahFormat = "docker") -> str:
        """``FROM scratch`` + ``COPY plugin.wasm /``, committed locally; returns its name."""
        sha = hashlib.sha256(module_bytes).hexdigest()
        with self._lock:
            cached = self._images.get((sha, fmt))
            if cached is not None:
                return cached
            src = self.src / sha / COMPAT_WASM_PATH
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(module_bytes)
            src.chmod(0o644)
            name = f"csi-wasm-{fmt}-{sha[:12]}-{secrets.token_hex(3)}"
            image = f"localhost/csi-wasm-compat:{fmt}-{sha[:16]}"
            ctr = self.buildah("from", "--quiet", "--name", name, "scratch").strip()
            self.buildah("copy", "--quiet", ctr, str(src), f"/{COMPAT_WASM_PATH}")
            self.buildah("commit", "--quiet", "--rm", "--format", fmt, ctr, image)
            self._images[(sha, fmt)] = image
            return image

    def buildah_push(self, image: str, registry: RegistryLike, repo: str, tag: str) -> str:
        """Push a local image; returns the manifest digest buildah reports."""
        _require_alive(registry)
        digestfile = self.tmp / f"digest-{secrets.token_hex(6)}"
        args = ["push", "--quiet", "--tls-verify=false", "--digestfile", str(digestfile)]
        creds = _creds(registry)
        if creds is not None:
            args.append(f"--creds={creds}")
        self.buildah(*args, image, f"docker://{registry.host}/{repo}:{tag}")
        digest = digestfile.read_text().strip()
        digestfile.unlink()
        return digest

    def buildah_compat_image(
        self,
        registry: RegistryLike,
        repo: str,
        tag: str,
        module_bytes: bytes,
        fmt: BuildahFormat = "docker",
    ) -> PushedModule:
        image = self.build_compat(module_bytes, fmt)
        digest = self.buildah_push(image, registry, repo, tag)
        pushed = pushed_from_registry(registry, repo, tag, module_bytes, tool=f"buildah-{fmt}")
        if pushed.manifest_digest != digest:
            raise ToolError(f"buildah said {digest}, registry serves {pushed.manifest_digest}")
        return pushed

    # -- skopeo -------------------------------------------------------------------

    def skopeo(self, *args: str) -> str:
        return _run([SKOPEO, "--tmpdir", str(self.tmp), *args], self.env)

    def skopeo_copy(
        self,
        src: PushedModule,
        src_registry: RegistryLike,
        dst_registry: RegistryLike,
        dst_repo: str,
        dst_tag: str,
        *,
        fmt: Literal["oci", "v2s2"] | None = None,
    ) -> PushedModule:
        """``skopeo copy docker://src docker://dst`` (``--format`` converts)."""
        _require_alive(src_registry)
        _require_alive(dst_registry)
        args = ["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]
        src_creds = _creds(src_registry)
        if src_creds is not None:
            args.append(f"--src-creds={src_creds}")
        dst_creds = _creds(dst_registry)
        if dst_creds is not None:
            args.append(f"--dest-creds={dst_creds}")
        if fmt is not None:
            args += ["--format", fmt]
        self.skopeo(
            *args, f"docker://{src.reference}", f"docker://{dst_registry.host}/{dst_repo}:{dst_tag}"
        )
        return _describe_copy(src, dst_registry, dst_repo, dst_tag, f"skopeo-{fmt or 'copy'}")

    def skopeo_inspect_raw(self, registry: RegistryLike, reference: str) -> bytes:
        """The manifest as skopeo sees it (``reference`` is ``host/repo:tag``)."""
        args = ["inspect", "--raw", "--tls-verify=false"]
        creds = _creds(registry)
        if creds is not None:
            args.append(f"--creds={creds}")
        return self.skopeo(*args, f"docker://{reference}").encode("utf-8")

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _describe_copy(
    src: PushedModule, registry: RegistryLike, repo: str, tag: str, tool: str
) -> PushedModule:
    """``pushed_from_registry`` without the module bytes: reuse the source's hash/size."""
    probe = pushed_from_registry(registry, repo, tag, b"", tool=tool)
    return PushedModule(
        reference=probe.reference,
        manifest_digest=probe.manifest_digest,
        module_sha256=src.module_sha256,
        module_size=src.module_size,
        repo=repo,
        tag=tag,
        manifest_media_type=probe.manifest_media_type,
        manifest_size=probe.manifest_size,
        config_media_type=probe.config_media_type,
        layer_media_type=probe.layer_media_type,
        layer_digest=probe.layer_digest,
        tool=tool,
        manifest=probe.manifest,
    )


@functools.cache
def default_tools() -> ContainersTools:
    """A process-wide :class:`ContainersTools` in a temp dir removed at exit."""
    tools = ContainersTools(Path(tempfile.mkdtemp(prefix="csi-wasm-buildah-")))
    atexit.register(tools.close)
    return tools


def buildah_compat_image(
    registry: RegistryLike,
    repo: str,
    tag: str,
    module_bytes: bytes,
    fmt: BuildahFormat = "docker",
    *,
    tools: ContainersTools | None = None,
) -> PushedModule:
    """Istio compat image (``plugin.wasm`` at ``/``) built and pushed by buildah."""
    return (tools or default_tools()).buildah_compat_image(registry, repo, tag, module_bytes, fmt)


def skopeo_copy(
    src: PushedModule,
    src_registry: RegistryLike,
    dst_registry: RegistryLike,
    dst_repo: str,
    dst_tag: str,
    *,
    fmt: Literal["oci", "v2s2"] | None = None,
    tools: ContainersTools | None = None,
) -> PushedModule:
    """Copy a pushed module with skopeo (optionally converting its format)."""
    return (tools or default_tools()).skopeo_copy(
        src, src_registry, dst_registry, dst_repo, dst_tag, fmt=fmt
    )


# -- oras-py -------------------------------------------------------------------------


def oras_push_artifact(
    registry: RegistryLike,
    repo: str,
    tag: str,
    module_bytes: bytes,
    *,
    filename: str = "module.wasm",
    config: dict[str, Any] | None = None,
    layer_type: str | None = WASM_LAYER,
    config_type: str | None = WASM_CONFIG,
) -> PushedModule:
    """A CNCF Wasm artifact pushed by oras-py (``OrasClient.push``).

    For the htpasswd registry the basic auth backend is used with credentials set on
    the client directly (``OrasClient.login`` would write ``~/.docker/config.json``).
    oras-py answers each 401 by retrying with the header, so every request reaches an
    auth registry twice.
    """
    _require_alive(registry)  # oras-py retries a dead host for minutes
    auth = registry.auth
    client = oras.client.OrasClient(
        hostname=registry.host,
        insecure=True,
        auth_backend="basic" if auth is not None else "token",
    )
    if auth is not None:
        client.auth.set_basic_auth(auth[0], auth[1])
    with tempfile.TemporaryDirectory(prefix="csi-wasm-oras-") as tmp:
        module_path = Path(tmp) / filename
        module_path.write_bytes(module_bytes)
        config_path = Path(tmp) / "config.json"
        config_obj = config if config is not None else wasm_config(sha256_digest(module_bytes))
        config_path.write_bytes(encode_manifest(config_obj))
        docker_config = Path(tmp) / "docker-config.json"
        docker_config.write_text(json.dumps({"auths": {}}))
        response = client.push(
            target=f"{registry.host}/{repo}:{tag}",
            config_path=str(docker_config),
            # None leaves the choice to oras, as `oras push file.wasm` does.
            files=[f"{module_path}:{layer_type}" if layer_type else str(module_path)],
            manifest_config=f"{config_path}:{config_type}" if config_type else None,
            disable_path_validation=True,
            quiet=True,
        )
    if response.status_code != 201:
        raise ToolError(f"oras push answered {response.status_code}: {response.text[:300]}")
    pushed = pushed_from_registry(registry, repo, tag, module_bytes, tool="oras-py")
    reported = response.headers.get("Docker-Content-Digest")
    if reported is not None and reported != pushed.manifest_digest:
        raise ToolError(f"oras push reported {reported}, registry serves {pushed.manifest_digest}")
    return pushed
