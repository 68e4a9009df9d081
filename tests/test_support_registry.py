"""Tests of the test infrastructure: registries, Wasm builder, pushers and tools.

Everything is read back with plain ``requests`` (not with ``support.oci``) so that a
bug in our pusher cannot hide behind the same bug in our reader.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from support import oci
from support.oci import PushedModule
from support.registry import Registry, _parse_access_line
from support.tools import ContainersTools, oras_push_artifact
from support.wasm import make_module, min_module_size, seed_value

Builder = Callable[[Registry, str, str, bytes], PushedModule]
ACCEPT = oci.ACCEPT_ALL_MANIFESTS


def _session(reg: Registry) -> requests.Session:
    s = requests.Session()
    s.auth = reg.auth
    return s


def _module_from_blob(pushed: PushedModule, blob: bytes) -> bytes:
    """The module bytes inside a layer blob: as is, or ``plugin.wasm`` in a tar.gz."""
    if pushed.layer_media_type == oci.WASM_LAYER:
        return blob
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        member = tar.extractfile("plugin.wasm")
        assert member is not None
        return member.read()


# -- Wasm modules --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 100, 130, 131, 16_513, 1 << 20])
def test_make_module_is_valid_and_exactly_sized(size: int, tmp_path: Path) -> None:
    module = make_module(size, "alpha")
    assert module[:8] == b"\0asm\x01\0\0\0"
    assert len(module) == max(size, min_module_size("alpha"))
    path = tmp_path / "m.wasm"
    path.write_bytes(module)
    subprocess.run(["wasm-validate", str(path)], check=True, capture_output=True)


def test_make_module_is_deterministic_and_distinct_per_seed() -> None:
    assert make_module(4096, "a") == make_module(4096, "a")
    assert make_module(4096, "a") != make_module(4096, "b")
    assert seed_value("a") != seed_value("b")


def test_make_module_runs_and_returns_seed_value(tmp_path: Path) -> None:
    path = tmp_path / "m.wasm"
    path.write_bytes(make_module(300, "run-me"))
    out = subprocess.run(
        ["wasm-interp", "--run-all-exports", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"seed() => i32:{seed_value('run-me') & 0xFFFFFFFF}" in out


# -- registries ------------------------------------------------------------------------


def test_anonymous_registry_answers(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    assert registry.auth is None
    r = requests.get(f"{registry.url}/v2/", timeout=5)
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_auth_registry_wants_credentials(auth_registry: Registry) -> None:
    user, password = auth_registry.credentials
    assert auth_registry.username == user and auth_registry.password == password
    r = requests.get(f"{auth_registry.url}/v2/", timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    assert (
        requests.get(f"{auth_registry.url}/v2/", auth=(user, "wrong"), timeout=5).status_code == 401
    )
    assert (
        requests.get(f"{auth_registry.url}/v2/", auth=(user, password), timeout=5).status_code
        == 200
    )


def test_auth_registry_refuses_anonymous_manifest_and_blob(
    auth_registry: Registry, unique_repo: str
) -> None:
    pushed = oci.push_wasm_artifact(auth_registry, unique_repo, "v1", make_module(200, "auth"))
    base = f"{auth_registry.url}/v2/{unique_repo}"
    assert requests.get(f"{base}/manifests/v1", timeout=5).status_code == 401
    assert requests.get(f"{base}/blobs/{pushed.layer_digest}", timeout=5).status_code == 401


def test_two_registries_have_different_ports(registry: Registry, auth_registry: Registry) -> None:
    assert registry.port != auth_registry.port


# -- pushing with every builder, reading back with plain requests ----------------------


def _builders(tools: ContainersTools) -> dict[str, Builder]:
    return {
        "oci-artifact": oci.push_wasm_artifact,
        "compat-docker": lambda r, repo, tag, m: oci.push_compat_image(r, repo, tag, m, "docker"),
        "compat-oci": lambda r, repo, tag, m: oci.push_compat_image(r, repo, tag, m, "oci"),
        "buildah-docker": lambda r, repo, tag, m: tools.buildah_compat_image(
            r, repo, tag, m, "docker"
        ),
        "buildah-oci": lambda r, repo, tag, m: tools.buildah_compat_image(r, repo, tag, m, "oci"),
        "oras": oras_push_artifact,
    }


EXPECTED_TYPES = {
    # builder: (manifest, config, layer)
    "oci-artifact": (oci.OCI_MANIFEST, oci.WASM_CONFIG, oci.WASM_LAYER),
    "compat-docker": (oci.DOCKER_MANIFEST, oci.DOCKER_CONFIG, oci.DOCKER_LAYER_TAR_GZIP),
    "compat-oci": (oci.OCI_MANIFEST, oci.OCI_CONFIG, oci.OCI_LAYER_TAR_GZIP),
    "buildah-docker": (oci.DOCKER_MANIFEST, oci.DOCKER_CONFIG, oci.DOCKER_LAYER_TAR_GZIP),
    "buildah-oci": (oci.OCI_MANIFEST, oci.OCI_CONFIG, oci.OCI_LAYER_TAR_GZIP),
    "oras": (oci.OCI_MANIFEST, oci.WASM_CONFIG, oci.WASM_LAYER),
}


@pytest.mark.parametrize("which_registry", ["registry", "auth_registry"])
@pytest.mark.parametrize("builder", sorted(EXPECTED_TYPES))
def test_push_and_read_back(
    builder: str,
    which_registry: str,
    request: pytest.FixtureRequest,
    container_tools: ContainersTools,
    unique_repo: str,
) -> None:
    reg: Registry = request.getfixturevalue(which_registry)
    module = make_module(50_000, f"{builder}-{which_registry}")
    pushed = _builders(container_tools)[builder](reg, unique_repo, "v1", module)

    manifest_type, config_type, layer_type = EXPECTED_TYPES[builder]
    assert pushed.reference == f"{reg.host}/{unique_repo}:v1"
    assert pushed.module_sha256 == hashlib.sha256(module).hexdigest()
    assert pushed.module_size == len(module)
    assert pushed.manifest_media_type == manifest_type

    with _session(reg) as s:
        base = f"{reg.url}/v2/{unique_repo}"
        by_tag = s.get(f"{base}/manifests/v1", headers={"Accept": ACCEPT}, timeout=10)
        assert by_tag.status_code == 200
        assert by_tag.headers["Content-Type"] == manifest_type
        assert by_tag.headers["Docker-Content-Digest"] == pushed.manifest_digest
        assert "sha256:" + hashlib.sha256(by_tag.content).hexdigest() == pushed.manifest_digest
        by_digest = s.get(
            f"{base}/manifests/{pushed.manifest_digest}", headers={"Accept": ACCEPT}, timeout=10
        )
        assert by_digest.status_code == 200
        assert by_digest.content == by_tag.content

        manifest = json.loads(by_tag.content)
        assert manifest["schemaVersion"] == 2
        assert manifest["config"]["mediaType"] == config_type
        assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type]

        config = s.get(f"{base}/blobs/{manifest['config']['digest']}", timeout=10)
        assert config.status_code == 200
        assert (
            "sha256:" + hashlib.sha256(config.content).hexdigest() == manifest["config"]["digest"]
        )
        json.loads(config.content)

        layer_desc = manifest["layers"][0]
        blob = s.get(f"{base}/blobs/{layer_desc['digest']}", timeout=10)
        assert blob.status_code == 200
        assert len(blob.content) == layer_desc["size"]
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer_desc["digest"]
        assert hashlib.sha256(_module_from_blob(pushed, blob.content)).hexdigest() == (
            pushed.module_sha256
        )
        assert pushed.layer_digest == layer_desc["digest"]


def test_tool_manifest_quirks(
    registry: Registry, container_tools: ContainersTools, unique_repo: str
) -> None:
    """Pin down what the tools produce (documented in support/tools.py)."""
    module = make_module(1000, "quirks")
    oras = json.loads(oras_push_artifact(registry, unique_repo, "oras", module).manifest)
    assert oras["mediaType"] == oci.OCI_MANIFEST
    assert oras["layers"][0]["annotations"] == {"org.opencontainers.image.title": "module.wasm"}
    assert oras.get("annotations") == {}

    b_oci = json.loads(
        container_tools.buildah_compat_image(registry, unique_repo, "boci", module, "oci").manifest
    )
    assert b_oci["annotations"] == {
        "org.opencontainers.image.base.digest": "",
        "org.opencontainers.image.base.name": "",
    }
    b_docker = container_tools.buildah_compat_image(
        registry, unique_repo, "bdock", module, "docker"
    )
    blob = requests.get(
        f"{registry.url}/v2/{unique_repo}/blobs/{b_docker.layer_digest}", timeout=10
    ).content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        members = tar.getmembers()
    # Go's archive/tar keeps the file-type bits in the header's mode: 0o100644.
    assert [(m.name, m.mode, m.uid, m.gid, m.isfile()) for m in members] == [
        ("plugin.wasm", 0o100644, 0, 0, True)
    ]


def test_skopeo_copies_verbatim_and_converts(
    registry: Registry,
    auth_registry: Registry,
    container_tools: ContainersTools,
    unique_repo: str,
) -> None:
    module = make_module(2000, "skopeo")
    artifact = oci.push_wasm_artifact(registry, unique_repo, "src", module)
    copied = container_tools.skopeo_copy(artifact, registry, auth_registry, unique_repo, "copy")
    assert copied.manifest_digest == artifact.manifest_digest
    assert copied.manifest == artifact.manifest
    assert copied.module_sha256 == artifact.module_sha256

    docker = oci.push_compat_image(registry, unique_repo, "docker", module, "docker")
    converted = container_tools.skopeo_copy(
        docker, registry, registry, unique_repo, "as-oci", fmt="oci"
    )
    assert converted.manifest_media_type == oci.OCI_MANIFEST
    assert converted.layer_media_type == oci.OCI_LAYER_TAR_GZIP
    assert converted.layer_digest == docker.layer_digest
    raw = container_tools.skopeo_inspect_raw(auth_registry, copied.reference)
    assert json.loads(raw) == json.loads(artifact.manifest)


def test_compat_image_variants_and_index(registry: Registry, unique_repo: str) -> None:
    module = make_module(500, "variants")
    dotted = oci.push_compat_image(
        registry, unique_repo, "dotted", module, "oci", path_in_layer="./plugin.wasm"
    )
    blob = requests.get(
        f"{registry.url}/v2/{unique_repo}/blobs/{dotted.layer_digest}", timeout=10
    ).content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        assert tar.getnames() == ["./plugin.wasm"]

    index_digest = oci.push_index(
        registry,
        unique_repo,
        "index",
        [dotted.manifest_descriptor(platform={"architecture": "wasm", "os": "wasip1"})],
    )
    r = requests.get(
        f"{registry.url}/v2/{unique_repo}/manifests/index", headers={"Accept": ACCEPT}, timeout=10
    )
    assert r.headers["Content-Type"] == oci.OCI_INDEX
    assert r.headers["Docker-Content-Digest"] == index_digest
    assert json.loads(r.content)["manifests"][0]["digest"] == dotted.manifest_digest


def test_push_manifest_keeps_exact_bytes_and_delete_works(
    registry: Registry, unique_repo: str
) -> None:
    module = make_module(300, "exact")
    layer = oci.push_blob(registry, unique_repo, module, oci.WASM_LAYER)
    config = oci.push_blob(registry, unique_repo, b"{}", oci.WASM_CONFIG)
    body = (
        b'{\n  "schemaVersion": 2,\n  "mediaType": "' + oci.OCI_MANIFEST.encode() + b'",\n'
        b'  "config": ' + json.dumps(config.as_dict()).encode() + b",\n"
        b'  "layers": [' + json.dumps(layer.as_dict()).encode() + b"]\n}\n"
    )
    digest = oci.push_manifest(registry, unique_repo, "pretty", body)
    r = requests.get(
        f"{registry.url}/v2/{unique_repo}/manifests/pretty", headers={"Accept": ACCEPT}, timeout=10
    )
    assert r.content == body
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    oci.delete_manifest(registry, unique_repo, digest)
    gone = requests.get(
        f"{registry.url}/v2/{unique_repo}/manifests/{digest}",
        headers={"Accept": ACCEPT},
        timeout=10,
    )
    assert gone.status_code == 404


# -- request counting --------------------------------------------------------------------


def test_request_counting(registry: Registry, unique_repo: str) -> None:
    pushed = oci.push_wasm_artifact(registry, unique_repo, "v1", make_module(10_000, "count"))
    mark = registry.mark()
    assert registry.blob_gets(pushed.layer_digest, since=mark) == 0
    url = f"{registry.url}/v2/{unique_repo}/blobs/{pushed.layer_digest}"
    for _ in range(3):
        assert requests.get(url, timeout=10).status_code == 200
    assert requests.head(url, timeout=10).status_code == 200
    requests.get(
        f"{registry.url}/v2/{unique_repo}/manifests/v1", headers={"Accept": ACCEPT}, timeout=10
    )

    assert registry.blob_gets(pushed.layer_digest, since=mark) == 3
    assert registry.blob_gets(pushed.layer_digest, repo=unique_repo, since=mark) == 3
    assert registry.blob_gets(pushed.layer_digest, repo="other/repo", since=mark) == 0
    assert registry.requests_matching("HEAD", rf"/v2/{unique_repo}/blobs/.*", since=mark) == 1
    assert registry.manifest_gets("v1", repo=unique_repo, since=mark) == 1
    # The push happened before the mark; counting from the start sees it.
    assert registry.requests_matching("PUT", rf"/v2/{unique_repo}/manifests/v1") == 1
    # Sentinel requests made by mark()/sync() are never counted.
    assert registry.requests_matching("GET", "/v2/", since=mark) == 0
    assert all(r.path.startswith("/v2/") for r in registry.records(since=mark))


def test_request_counting_with_auth(auth_registry: Registry, unique_repo: str) -> None:
    pushed = oci.push_wasm_artifact(auth_registry, unique_repo, "v1", make_module(1000, "ac"))
    mark = auth_registry.mark()
    url = f"{auth_registry.url}/v2/{unique_repo}/blobs/{pushed.layer_digest}"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=auth_registry.credentials, timeout=10).status_code == 200
    assert auth_registry.blob_gets(pushed.layer_digest, since=mark) == 2
    assert auth_registry.blob_gets(pushed.layer_digest, status=200, since=mark) == 1


def test_access_log_parser() -> None:
    line = (
        '127.0.0.1 - - [22/Nov/2026:02:18:51 +0000] "GET /v2/a/b/blobs/sha256:ab?x=1 HTTP/1.1"'
        ' 200 2 "" "curl/7.88.1"'
    )
    rec = _parse_access_line(line)
    assert rec is not None
    assert (rec.method, rec.path, rec.status, rec.size, rec.user_agent) == (
        "GET",
        "/v2/a/b/blobs/sha256:ab",
        200,
        2,
        "curl/7.88.1",
    )
    assert _parse_access_line('{"level":"info","msg":"listening on 127.0.0.1:1"}') is None


def test_blob_data_path_points_at_stored_blob(registry: Registry, unique_repo: str) -> None:
    module = make_module(700, "on-disk")
    pushed = oci.push_wasm_artifact(registry, unique_repo, "v1", module)
    assert registry.blob_data_path(pushed.layer_digest).read_bytes() == module


def test_private_registry_restart_keeps_port_and_data(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    try:
        reg.start()
        pushed = oci.push_wasm_artifact(reg, "restart/me", "v1", make_module(100, "restart"))
        port = reg.port
        reg.stop()
        assert not reg.is_running()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{reg.url}/v2/", timeout=5)
        reg.start()
        assert reg.port == port
        r = requests.get(
            f"{reg.url}/v2/restart/me/manifests/{pushed.manifest_digest}",
            headers={"Accept": ACCEPT},
            timeout=10,
        )
        assert r.status_code == 200
        assert "restart" in reg.tail_log()
    finally:
        reg.close()
    assert not reg.is_running()
