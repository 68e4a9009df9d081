"""A clone of the repository in any directory passes its own tests: nothing reads beside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support.confinement import REPO, SESSION_GUARD, SiblingReads

# Where code that runs in development and CI lives (tests/ is also guarded as it runs).
CODE = ("tests", "benchmarks", "demo", "scripts", ".ci", "dev")
# A path that climbs out of the repository to a sibling directory.
CLIMBS_OUT = re.compile(r"""\.\./shared\b|\.parent\s*/\s*["']shared["']|parents\[[3-9]\]""")


def test_opening_a_sibling_is_noted(tmp_path: Path) -> None:
    repo = tmp_path / "work" / "repo"
    guard = SiblingReads(repo, allowed=())
    guard("open", (str(tmp_path / "work" / "shared" / "crd.yaml"), "r", 0))
    guard("open", (repo / "tests" / "data.yaml", "r", 0))
    guard("open", (str(tmp_path / "elsewhere"), "r", 0))
    guard("open", (7, "r", 0))  # a file descriptor
    assert guard.take() == [str(tmp_path / "work" / "shared" / "crd.yaml")]
    assert guard.take() == []


def test_listing_and_commands_that_name_a_sibling_are_noted(tmp_path: Path) -> None:
    repo = tmp_path / "work" / "repo"
    guard = SiblingReads(repo, allowed=())
    sibling = tmp_path / "work" / "shared"
    guard("os.scandir", (sibling,))
    guard("subprocess.Popen", ("helm", ["helm", "lint", f"--values={sibling}/v.yaml"], None, None))
    guard("subprocess.Popen", ("ls", ["ls", "-l", "README.md"], str(repo), None))
    assert guard.take() == [str(sibling), f"{sibling}/v.yaml"]


def test_a_clone_in_the_temporary_directory_guards_nothing(tmp_path: Path) -> None:
    guard = SiblingReads(tmp_path / "repo", allowed=(str(tmp_path),))
    guard("open", (str(tmp_path / "shared"), "r", 0))
    assert not guard.active
    assert guard.take() == []


def test_the_session_guard_sees_real_opens() -> None:
    if not SESSION_GUARD.active:
        pytest.skip(f"{REPO.parent} is inside the temporary directory: no siblings to guard")
    sibling = REPO.parent / "no-such-sibling-of-csi-wasm" / "data.yaml"
    with pytest.raises(FileNotFoundError):
        sibling.read_text()
    assert SESSION_GUARD.take() == [str(sibling)]


def test_no_code_names_a_path_beside_the_repository() -> None:
    files = [REPO / "dev"]
    for top in CODE[:-1]:
        files += [
            p for p in (REPO / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
    assert len(files) > 50
    offenders = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in files
        if path.suffix not in {".pyc", ".wasm", ".gz", ".tar"}
        for match in CLIMBS_OUT.finditer(path.read_text(errors="replace"))
    ]
    # This file spells the patterns out; nothing else may.
    offenders = [o for o in offenders if not o.startswith("tests/test_confinement.py")]
    assert offenders == []


def test_all_test_data_is_tracked() -> None:
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "tests/data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if untracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert untracked.stdout.split() == [], "test data a clone would not have"
