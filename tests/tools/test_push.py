"""`csi-wasm push` against the real registry; what it pushes is pulled by skopeo, oras-py and
the driver."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import oras.client
import pytest
from support.driver import NodeDirs, in_process
from support.kubelet import dockerconfigjson
from support.oci import get_blob, get_manifest, pushed_from_registry
from support.registry import Registry
from support.tools import ContainersTools
from support.wasm import make_module

from csi_wasm.cli import main
from csi_wasm.verify import Abi, InvalidModule, facts_of, judge

Push = Callable[..., tuple[int, dict[str, str], str]]


@pytest.fixture
def push(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Push:
    """``csi-wasm push`` of ``module`` to ``target``: (status, output lines by key, stderr)."""

    def invoke(module: bytes, target: str, *args: str) -> tuple[int, dict[str, str], str]:
        path = tmp_path / "filter.wasm"
        path.write_bytes(module)
        status = main(["push", str(path), target, *args])
        out, err = capsys.readouterr()
        # "key: value" lines, and "pushed REF (...)" under "pushed"
        split = [line.partition(": " if ": " in line else " ") for line in out.splitlines()]
        return status, {key: value for key, _, value in split}, err

    return invoke


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish(node_dirs: NodeDirs, registry: Registry, attributes: dict[str, str]) -> bytes:
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host}))
    with in_process(node_dirs, settings) as (_driver, kubelet):
        pod = kubelet.new_pod()
        kubelet.publish(pod, attributes)
        return (pod.target / "plugin.wasm").read_bytes()


def test_an_artifact_pulled_by_skopeo_oras_and_the_driver(
    push: Push,
    registry: Registry,
    unique_repo: str,
    container_tools: ContainersTools,
    node_dirs: NodeDirs,
    tmp_path: Path,
) -> None:
    module = make_module(5000, "p-artifact")
    reference = f"{registry.host}/{unique_repo}:v1"
    status, lines, err = push(module, reference, "--insecure-registry", registry.host)
    assert (status, err) == (0, "")
    digest = lines["digest"]
    assert lines["url"] == f"oci://{reference}"
    assert lines["sha256"] == f'"{digest.removeprefix("sha256:")}"'

    # skopeo reads the manifest we wrote and copies the artifact as it is.
    raw = container_tools.skopeo_inspect_raw(registry, reference)
    assert "sha256:" + sha(raw) == digest
    source = pushed_from_registry(registry, unique_repo, "v1", module, tool="csi-wasm push")
    copy = container_tools.skopeo_copy(source, registry, registry, unique_repo, "copy")
    assert copy.manifest_digest == digest
    assert get_blob(registry, unique_repo, "sha256:" + sha(module)) == module

    # oras-py pulls the layer into a file named by its title.
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    (pulled,) = client.pull(target=reference, outdir=str(tmp_path / "oras"))
    assert Path(pulled).name == "plugin.wasm"
    assert Path(pulled).read_bytes() == module

    # The driver mounts it with the lines push printed.
    attributes = {"url": lines["url"], "sha256": json.loads(lines["sha256"])}
    assert publish(node_dirs, registry, attributes) == module


def test_a_compat_image_copied_to_docker_format_by_skopeo(
    push: Push,
    registry: Registry,
    unique_repo: str,
    container_tools: ContainersTools,
    node_dirs: NodeDirs,
) -> None:
    module = make_module(5000, "p-compat")
    reference = f"{registry.host}/{unique_repo}:v1"
    status, lines, _ = push(
        module, reference, "--format", "compat", "--insecure-registry", registry.host
    )
    assert status == 0
    manifest = json.loads(get_manifest(registry, unique_repo, "v1").content)
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert publish(node_dirs, registry, {"url": lines["url"]}) == module
    # skopeo rewrites it as a Docker image (it must read every blob for that).
    source = pushed_from_registry(registry, unique_repo, "v1", module, tool="csi-wasm push")
    docker = container_tools.skopeo_copy(
        source, registry, registry, unique_repo, "docker", fmt="v2s2"
    )
    assert docker.manifest_media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert publish(node_dirs, registry, {"url": docker.reference}) == module


def test_pushing_again_uploads_nothing_and_gives_the_same_digest(
    push: Push, registry: Registry, unique_repo: str
) -> None:
    module = make_module(3000, "p-again")
    reference = f"{registry.host}/{unique_repo}:v1"
    first = push(module, reference, "--insecure-registry", registry.host)
    again = push(module, reference, "--insecure-registry", registry.host)
    assert first[1]["digest"] == again[1]["digest"]
    described = f"{reference} (3000-byte module sha256:{sha(module)}; "
    assert first[1]["pushed"] == described + "2 of 2 blobs uploaded)"
    assert again[1]["pushed"] == described + "0 of 2 blobs uploaded)"


def test_source_date_epoch_sets_created(
    push: Push, registry: Registry, unique_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    status, _, _ = push(
        make_module(3000, "p-date"),
        f"{registry.host}/{unique_repo}:v1",
        "--insecure-registry",
        registry.host,
    )
    assert status == 0
    manifest = json.loads(get_manifest(registry, unique_repo, "v1").content)
    config = json.loads(get_blob(registry, unique_repo, manifest["config"]["digest"]))
    assert config["created"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(
    ("module", "abi"),
    [
        pytest.param(make_module(3000, "p-plain", proxy_wasm=False), Abi.PROXY_WASM, id="no abi"),
        pytest.param(make_module(3000, "p-cut")[:2000], Abi.ANY, id="truncated"),
    ],
)
def test_refuses_what_the_driver_would_refuse(
    push: Push, registry: Registry, unique_repo: str, module: bytes, abi: Abi, tmp_path: Path
) -> None:
    reference = f"{registry.host}/{unique_repo}:v1"
    status, lines, err = push(
        module, reference, "--abi", abi.value, "--insecure-registry", registry.host
    )
    assert (status, lines) == (1, {})
    with pytest.raises(InvalidModule) as verdict:
        judge(facts_of(module), abi, str(tmp_path / "filter.wasm"))
    assert err == f"csi-wasm push: {verdict.value.message}\n"
    assert get_manifest(registry, unique_repo, "v1").status_code == 404  # nothing pushed


def test_a_private_registry_takes_docker_config(
    push: Push, auth_registry: Registry, unique_repo: str, tmp_path: Path
) -> None:
    module = make_module(3000, "p-private")
    reference = f"{auth_registry.host}/{unique_repo}:v1"
    insecure = ("--insecure-registry", auth_registry.host)
    status, _, err = push(module, reference, *insecure)
    assert status == 1
    assert "requires credentials to push" in err and err.count("\n") == 1
    user, password = auth_registry.credentials
    config = tmp_path / "config.json"
    config.write_text(dockerconfigjson(auth_registry.host, user, password)[".dockerconfigjson"])
    status, _, err = push(module, reference, *insecure, "--docker-config", str(config))
    assert (status, err) == (0, "")
    assert get_blob(auth_registry, unique_repo, "sha256:" + sha(module)) == module


@pytest.mark.parametrize(
    ("target", "status", "message"),
    [
        (f"ghcr.io/a/b@sha256:{'0' * 64}", 2, "names a digest; give a tag"),
        ("Not A Ref", 2, "invalid OCI reference"),
    ],
)
def test_usage_errors(push: Push, target: str, status: int, message: str) -> None:
    got, lines, err = push(make_module(3000, "p-usage"), target)
    assert (got, lines) == (status, {})
    assert err.startswith("csi-wasm push: ") and message in err


def test_a_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["push", str(tmp_path / "none.wasm"), "ghcr.io/a/b:v1"]) == 1
    assert (
        capsys.readouterr().err
        == f"csi-wasm push: {tmp_path / 'none.wasm'}: No such file or directory\n"
    )


def test_an_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["push", str(tmp_path / "x.wasm"), "ghcr.io/a/b:v1", "--format", "zip"])
    assert exited.value.code == 2
