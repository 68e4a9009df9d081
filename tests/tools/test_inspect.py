"""`csi-wasm inspect` against the real registry: every format, URLs, files, credentials, mirrors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from registry.fake_registry import FakeServer, make_self_signed, reply
from support.cosign import Signer, push_signature_tag, signed_layer, simplesigning_payload
from support.driver import NodeDirs, in_process
from support.kubelet import dockerconfigjson, rpc_error
from support.oci import (
    Descriptor,
    gzip_bytes,
    make_layer_tar,
    push_compat_image,
    push_custom_artifact,
    push_index,
    push_wasm_artifact,
)
from support.registry import Registry
from support.tools import oras_push_artifact
from support.wasm import make_module

from csi_wasm.cli import main
from csi_wasm.formats import mediatypes as mt
from csi_wasm.settings import VerifySettings
from csi_wasm.tools.common import RegistryAccess
from csi_wasm.tools.inspect import JSON_FIELDS, InspectOptions, inspect
from csi_wasm.verify import Abi

Run = Callable[..., tuple[int, str, str]]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], registry: Registry) -> Run:
    """``csi-wasm inspect ARGS`` (trusting the test registry): (status, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        status = main(["inspect", *args, "--insecure-registry", registry.host])
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def options(registry: Registry, target: str, **more: object) -> InspectOptions:
    access = RegistryAccess(insecure_registries=frozenset({registry.host}))
    return InspectOptions(target, access=access, **more)  # type: ignore[arg-type]


# -- every format ------------------------------------------------------------------------

Pushed = tuple[str, bytes]  # reference, module


def _artifact(registry: Registry, repo: str) -> Pushed:
    module = make_module(2048, "i-artifact")
    return push_wasm_artifact(registry, repo, "v1", module).reference, module


def _compat(flavor: str) -> Callable[[Registry, str], Pushed]:
    def push(registry: Registry, repo: str) -> Pushed:
        module = make_module(2048, f"i-compat-{flavor}")
        pushed = push_compat_image(registry, repo, "v1", module, flavor)  # type: ignore[arg-type]
        return pushed.reference, module

    return push


def _custom(config_type: str, layer_type: str) -> Callable[[Registry, str], Pushed]:
    def push(registry: Registry, repo: str) -> Pushed:
        module = make_module(2048, f"i-{layer_type}")
        layers = [(module, layer_type)]
        if config_type == mt.MODULE_WASM_CONFIG_V1:  # wasme repeats its config as a layer
            layers.insert(0, (b'{"type": "envoy_proxy"}', mt.MODULE_WASM_CONFIG_V1))
        return push_custom_artifact(registry, repo, "v1", config_type, layers), module

    return push


def _oras(registry: Registry, repo: str) -> Pushed:
    module = make_module(2048, "i-oras")
    pushed = oras_push_artifact(registry, repo, "v1", module, layer_type=None, config_type=None)
    return pushed.reference, module


def _tarball(registry: Registry, repo: str) -> Pushed:
    module = make_module(2048, "i-tar")
    layer = gzip_bytes(make_layer_tar({"plugin.wasm": module}))
    return push_custom_artifact(
        registry, repo, "v1", mt.OCI_EMPTY, [(layer, mt.OCI_LAYER_TAR_GZIP)]
    ), module


FORMATS = {
    "wasm-artifact": _artifact,
    "compat-image (docker)": _compat("docker"),
    "compat-image (oci)": _compat("oci"),
    "solo-oci": _custom(mt.MODULE_WASM_CONFIG_V1, mt.MODULE_WASM_CONTENT_V1),
    "wasme-legacy": _custom(mt.SOLO_WASM_CONFIG_V1, mt.SOLO_WASM_CODE_V1),
    "wasm-to-oci": _custom(mt.WASM_TO_OCI_CONFIG_V1, mt.WASM_TO_OCI_CONTENT_V1),
    "single-layer (oras push)": _oras,
    "single-layer (tarball)": _tarball,
}


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_every_format(registry: Registry, unique_repo: str, case: str) -> None:
    reference, module = FORMATS[case](registry, unique_repo)
    report = inspect(options(registry, reference))
    assert report.serve, report.message
    assert report.format == case.split(" ", maxsplit=1)[0]
    assert report.module_digest == sha(module)
    assert report.facts is not None and report.facts.size == len(module)
    assert report.facts.abi_versions == ("0.2.1",)
    assert ("malloc", "func") in report.facts.exports
    assert report.manifest_digest is not None
    assert report.index_digests == ()


def test_an_index_is_resolved_as_the_driver_does(
    run: Run, registry: Registry, unique_repo: str
) -> None:
    wasm = push_wasm_artifact(registry, unique_repo, "wasm", make_module(2048, "i-idx"))
    other = push_compat_image(registry, unique_repo, "linux", make_module(2048, "i-lx"), "oci")
    index = push_index(
        registry,
        unique_repo,
        "v1",
        [
            Descriptor(
                other.manifest_media_type,
                other.manifest_digest,
                other.manifest_size,
                platform={"os": "linux", "architecture": "amd64"},
            ),
            wasm.manifest_descriptor({"os": "wasip1", "architecture": "wasm"}),
        ],
    )
    status, out, err = run(f"oci://{registry.host}/{unique_repo}:v1")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert f"index:      {index}" in lines
    assert f"manifest:   {wasm.manifest_digest}" in lines
    assert f"module:     {wasm.module_digest}" in lines
    assert "format:     wasm-artifact" in lines
    assert "verdict:    serve (abi: proxy-wasm)" in lines


# -- verdicts and exit statuses ------------------------------------------------------------


def test_a_module_without_the_proxy_wasm_abi(
    run: Run, registry: Registry, unique_repo: str
) -> None:
    plain = make_module(2048, "i-plain", proxy_wasm=False)
    pushed = push_wasm_artifact(registry, unique_repo, "v1", plain)
    status, out, err = run(pushed.reference)
    assert status == 1
    assert "exports no proxy_abi_version_* function; found: seed" in err
    assert err.count("\n") == 1 and err.startswith("csi-wasm inspect: ")
    assert "verdict:    refuse (abi: proxy-wasm): FAILED_PRECONDITION: " in out
    # The same module for another host: structure only.
    assert run(pushed.reference, "--abi", "any")[0] == 0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: None, id="tag not found"),
        pytest.param(lambda: b"not wasm at all", id="not a wasm module"),
        pytest.param(lambda: make_module(2048, "i-cut")[:1000], id="truncated"),
        pytest.param(lambda: make_module(2048, "i-noabi", proxy_wasm=False), id="no abi export"),
    ],
)
def test_the_refusal_is_the_drivers_own(
    registry: Registry, unique_repo: str, node_dirs: NodeDirs, make: Callable[[], bytes | None]
) -> None:
    layer = make()
    if layer is not None:
        push_custom_artifact(
            registry, unique_repo, "v1", mt.WASM_CONFIG_V0, [(layer, "application/wasm")]
        )
    reference = f"{registry.host}/{unique_repo}:v1"
    report = inspect(options(registry, reference))
    assert not report.serve
    settings = node_dirs.settings(insecure_registries=frozenset({registry.host}))
    with in_process(node_dirs, settings) as (_driver, kubelet):
        code, message = rpc_error(lambda: kubelet.publish(kubelet.new_pod(), {"url": reference}))
    assert (report.code, report.message) == (code.name, message)
    if layer is not None and layer.startswith(b"\0asm") and len(layer) == 2048:
        # Refused for its ABI only: its exports are still shown.
        assert report.facts is not None and report.facts.exports == (("seed", "func"),)


def test_a_file(run: Run, tmp_path: Path) -> None:
    module = make_module(3000, "i-file")
    path = tmp_path / "filter.wasm"
    path.write_bytes(module)
    status, out, _ = run(str(path))
    assert status == 0
    assert f"module:     {sha(module)}" in out.splitlines()
    assert "size:       3000 bytes" in out.splitlines()
    # gzip'ed, as an https body may be
    (tmp_path / "filter.wasm.gz").write_bytes(gzip.compress(module))
    status, out, _ = run(str(tmp_path / "filter.wasm.gz"))
    assert status == 0 and f"module:     {sha(module)}" in out.splitlines()


def test_a_truncated_file_names_the_validators_reason(run: Run, tmp_path: Path) -> None:
    module = make_module(3000, "i-cut")
    path = tmp_path / "cut.wasm"
    path.write_bytes(module[:1500])
    status, out, err = run(str(path), "--json")
    assert status == 1
    document = json.loads(out)
    assert document["serve"] is False
    assert document["structure_error"]
    assert document["code"] == "FAILED_PRECONDITION"
    assert f"{path} is not a valid WebAssembly module" in document["message"]
    assert document["message"] in err


def test_a_missing_file_is_one_line(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = run(str(tmp_path / "nothing.wasm"))
    assert status == 1
    assert err == f"csi-wasm inspect: {tmp_path / 'nothing.wasm'}: No such file or directory\n"
    # A bare name ending in .wasm is a file too, not docker.io/library/typo.wasm.
    monkeypatch.chdir(tmp_path)
    status, _, err = run("typo.wasm")
    assert (status, err) == (1, "csi-wasm inspect: typo.wasm: No such file or directory\n")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["Not A Reference"], id="bad reference"),
        pytest.param(
            ["ghcr.io/a/b:v1", "--docker-config", "/nonexistent/config.json"], id="config"
        ),
        pytest.param(["ghcr.io/a/b:v1", "--registry-mirror", "no-equals-sign"], id="mirror"),
        pytest.param(["ftp://example.com/x.wasm"], id="scheme"),
    ],
)
def test_usage_errors_exit_2(run: Run, args: list[str]) -> None:
    status, out, err = run(*args)
    assert (status, out) == (2, "")
    assert err.startswith("csi-wasm inspect: ") and err.count("\n") == 1


def test_an_unknown_flag_exits_2(run: Run) -> None:
    with pytest.raises(SystemExit) as exited:
        run("ghcr.io/a/b:v1", "--no-such-flag")
    assert exited.value.code == 2


# -- --json -------------------------------------------------------------------------------


def test_json_fields_are_stable(run: Run, registry: Registry, unique_repo: str) -> None:
    module = make_module(2048, "i-json")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    status, out, _ = run(pushed.reference, "--json")
    assert status == 0
    document = json.loads(out)
    # Written out: renaming a field must fail here (and the README lists the same keys).
    assert list(document) == [
        "source", "kind", "format", "mirror", "index_digests", "manifest_digest",
        "module_digest", "size", "abi_versions", "exports", "imports", "structure_error",
        "abi", "serve", "code", "message",
    ]  # fmt: skip
    assert list(document) == list(JSON_FIELDS)
    assert document == {
        "source": f"oci://{pushed.reference}",
        "kind": "oci",
        "format": "wasm-artifact",
        "mirror": None,
        "index_digests": [],
        "manifest_digest": pushed.manifest_digest,
        "module_digest": sha(module),
        "size": len(module),
        "abi_versions": ["0.2.1"],
        "exports": [
            {"name": "seed", "kind": "func"},
            {"name": "memory", "kind": "memory"},
            {"name": "proxy_abi_version_0_2_1", "kind": "func"},
            {"name": "malloc", "kind": "func"},
        ],
        "imports": [],
        "structure_error": None,
        "abi": "proxy-wasm",
        "serve": True,
        "code": None,
        "message": None,
    }


def test_json_when_the_reference_cannot_be_resolved(
    run: Run, registry: Registry, unique_repo: str
) -> None:
    status, out, err = run(f"{registry.host}/{unique_repo}:missing", "--json")
    assert status == 1
    document = json.loads(out)
    assert list(document) == list(JSON_FIELDS)
    assert document["code"] == "NOT_FOUND"
    assert document["size"] is None and document["exports"] == []
    assert document["message"] in err


# -- credentials, mirrors, https ----------------------------------------------------------


def test_private_registry_with_docker_config(
    capsys: pytest.CaptureFixture[str], auth_registry: Registry, unique_repo: str, tmp_path: Path
) -> None:
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", make_module(2048, "i-priv"))
    base = ["inspect", pushed.reference, "--insecure-registry", auth_registry.host]
    assert main(base) == 1
    assert "requires credentials" in capsys.readouterr().err
    config = tmp_path / "config.json"
    user, password = auth_registry.credentials
    config.write_text(dockerconfigjson(auth_registry.host, user, password)[".dockerconfigjson"])
    assert main([*base, "--docker-config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and password not in out


def test_a_mirror_serves_the_source(registry: Registry, unique_repo: str) -> None:
    module = make_module(2048, "i-mirror")
    push_wasm_artifact(registry, unique_repo, "v1", module)
    # The source does not exist: only the mirror can answer.
    mirrored = f"source.invalid:5000/{unique_repo}:v1"
    report = inspect(options(registry, mirrored, mirrors=(f"source.invalid:5000={registry.host}",)))
    assert report.serve, report.message
    assert report.mirror == registry.host
    assert report.source == f"oci://{mirrored}"
    assert report.module_digest == sha(module)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[FakeServer, Path]]:
    (tmp_path / "tls").mkdir()
    tls = make_self_signed(tmp_path / "tls")
    with FakeServer("127.0.0.1", tls=(tls.cert, tls.key)) as server:
        yield server, tls.cert


def test_an_https_url(
    https_server: tuple[FakeServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, ca = https_server
    module = make_module(2048, "i-https")
    server.route("/filters/f.wasm", reply(module))
    url = f"{server.url}/filters/f.wasm"
    base = ["inspect", "--registry-ca", str(ca), "--json"]
    assert main([*base, url]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["kind"], document["module_digest"]) == ("url", sha(module))
    assert main(["inspect", "--registry-ca", str(ca), url]) == 0
    assert f'sha256:     "{sha(module)[7:]}"' in capsys.readouterr().out.splitlines()
    # With the sha256 a volume would give, the driver's puller fetches and checks it.
    assert main([*base, f"{url}#sha256={sha(module)[7:]}"]) == 0
    capsys.readouterr()
    assert main([*base, f"{url}#sha256={'0' * 64}"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["code"] == "FAILED_PRECONDITION"
    assert "sha256 mismatch" in document["message"]
    # Without the CA, TLS verification fails as it would on a node.
    assert main(["inspect", url]) == 1
    assert "--registry-ca" in capsys.readouterr().err


def test_abi_any_from_the_environment(
    registry: Registry,
    unique_repo: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pushed = push_wasm_artifact(
        registry, unique_repo, "v1", make_module(2048, "i-env", proxy_wasm=False)
    )
    monkeypatch.setenv("CSI_WASM_ABI", "any")
    monkeypatch.setenv("CSI_WASM_INSECURE_REGISTRY", registry.host)
    monkeypatch.setenv("CSI_WASM_JSON", "true")
    assert main(["inspect", pushed.reference]) == 0
    assert json.loads(capsys.readouterr().out)["abi"] == Abi.ANY.value


# -- the node's signature policy -----------------------------------------------------------


def test_signature_policy_as_the_node_has_it(
    run: Run, registry: Registry, unique_repo: str, tmp_path: Path, node_dirs: NodeDirs
) -> None:
    signer = Signer.p256()
    key = f"team={signer.write_public(tmp_path / 'team.pub')}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f'rules:\n- match: "{registry.host}/**"\n  keys: [team]\n  mode: enforce\n')
    verify = ("--verify-key", key, "--verify-policy", str(policy))
    unsigned = push_wasm_artifact(registry, unique_repo, "unsigned", make_module(2048, "i-uns"))
    signed = push_wasm_artifact(registry, unique_repo, "signed", make_module(2048, "i-sig"))
    payload = simplesigning_payload(signed.manifest_digest, signed.reference)
    push_signature_tag(
        registry, unique_repo, signed.manifest_digest, [signed_layer(signer, payload)]
    )

    assert run(signed.reference, *verify)[0] == 0
    status, _, err = run(unsigned.reference, *verify)
    assert status == 1
    settings = dataclasses.replace(
        node_dirs.settings(insecure_registries=frozenset({registry.host})),
        verify=VerifySettings((key,), str(policy)),
    )
    with in_process(node_dirs, settings) as (_driver, kubelet):
        _, message = rpc_error(
            lambda: kubelet.publish(kubelet.new_pod(), {"url": unsigned.reference})
        )
    assert err == f"csi-wasm inspect: {message}\n"
    assert "needs a signature by key team" in message
    # Without the node's policy, the same module would be served.
    assert run(unsigned.reference)[0] == 0
    # A key file that cannot be read is a usage error.
    assert run(unsigned.reference, "--verify-key", f"team={tmp_path / 'none.pub'}")[0] == 2


def test_exit_statuses_of_the_real_process(tmp_path: Path) -> None:
    good, plain = tmp_path / "good.wasm", tmp_path / "plain.wasm"
    good.write_bytes(make_module(2048, "i-proc"))
    plain.write_bytes(make_module(2048, "i-proc", proxy_wasm=False))

    def status(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "csi_wasm", "inspect", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in done.stderr
        return done.returncode, done.stderr

    assert status(str(good)) == (0, "")
    code, err = status(str(plain))
    assert code == 1 and err.count("\n") == 1
    assert status(str(good), "--abi", "wasi")[0] == 2  # argparse: not a choice
    assert status("Not A Reference")[0] == 2
