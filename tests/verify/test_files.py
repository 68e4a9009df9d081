"""Tests of csi_wasm.verify.files: the size-capped read of key and policy files."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_wasm.verify.files import read_capped
from csi_wasm.verify.keys import KeyFileError
from csi_wasm.verify.policy import PolicyError


def test_a_file_of_exactly_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"x" * 16)
    assert read_capped(path, 16, "policy file", PolicyError) == b"x" * 16


def test_one_byte_over_the_limit_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "team.pub"
    path.write_bytes(b"x" * 17)
    with pytest.raises(KeyFileError) as raised:
        read_capped(path, 16, "key file", KeyFileError)
    assert str(raised.value) == f"key file {path} is larger than 16 bytes"


def test_an_unreadable_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as raised:
        read_capped(path, 16, "policy file", PolicyError)
    assert str(raised.value) == f"cannot read policy file {path}: No such file or directory"
