"""Tests of csi_wasm.cache.kept_facts: the facts kept beside each cached module."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.wasm import make_module

from csi_wasm.cache.kept_facts import KeptFacts
from csi_wasm.verify import facts_of, validator


@pytest.fixture
def kept(tmp_path: Path) -> KeptFacts:
    kept = KeptFacts(tmp_path / "facts")
    kept.prepare()
    return kept


def _module_file(tmp_path: Path, module: bytes) -> tuple[str, Path]:
    path = tmp_path / "plugin.wasm"
    path.write_bytes(module)
    return hashlib.sha256(module).hexdigest(), path


def test_facts_are_read_once_then_kept(kept: KeptFacts, tmp_path: Path) -> None:
    module = make_module(3000, "kept")
    module_hex, path = _module_file(tmp_path, module)
    assert kept.known(module_hex) is None
    facts = kept.of_module(module_hex, path)
    assert facts == facts_of(module)
    stored = json.loads((kept.directory / f"{module_hex}.json").read_text())
    assert stored == {"validator": validator(), "facts": facts.to_json()}
    path.unlink()  # the module is not read again: the kept facts answer
    assert kept.of_module(module_hex, path) == facts


def test_a_new_process_reads_the_kept_file_not_the_module(kept: KeptFacts, tmp_path: Path) -> None:
    module_hex, path = _module_file(tmp_path, make_module(3000, "restart"))
    facts = kept.of_module(module_hex, path)
    path.unlink()
    assert KeptFacts(kept.directory).of_module(module_hex, path) == facts


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"validator": "wasmtime 0.0.1", "facts": {}}',
        b'{"facts": {"size": 1}}',
    ],
)
def test_damaged_or_foreign_verdicts_are_judged_again(
    kept: KeptFacts, tmp_path: Path, body: bytes
) -> None:
    module = make_module(3000, "again")
    module_hex, path = _module_file(tmp_path, module)
    (kept.directory / f"{module_hex}.json").write_bytes(body)
    assert kept.known(module_hex) is None
    assert kept.of_module(module_hex, path) == facts_of(module)
    stored = json.loads((kept.directory / f"{module_hex}.json").read_text())
    assert stored["validator"] == validator()


def test_refresh_reads_the_module_again(kept: KeptFacts, tmp_path: Path) -> None:
    module = make_module(3000, "refresh")
    module_hex, path = _module_file(tmp_path, module)
    kept.of_module(module_hex, path)
    path.write_bytes(module[:100])  # what fsck would find after bit rot
    assert kept.refresh(module_hex, path).structure_error is not None
    assert kept.known(module_hex) == facts_of(module[:100])


def test_prune_drops_the_facts_of_modules_no_longer_stored(kept: KeptFacts, tmp_path: Path) -> None:
    kept_hex, kept_path = _module_file(tmp_path, make_module(3000, "stays"))
    kept.of_module(kept_hex, kept_path)
    gone = tmp_path / "gone.wasm"
    gone.write_bytes(make_module(3000, "goes"))
    gone_hex = hashlib.sha256(gone.read_bytes()).hexdigest()
    kept.of_module(gone_hex, gone)
    (kept.directory / ".in-progress.json.tmp").write_bytes(b"")
    assert kept.prune(lambda module_hex: module_hex == kept_hex) == 1
    assert sorted(p.name for p in kept.directory.iterdir()) == [
        ".in-progress.json.tmp",
        f"{kept_hex}.json",
    ]
    gone.unlink()
    assert kept.known(gone_hex) is None  # forgotten in memory too


def test_record_makes_the_directory_of_an_old_cache(tmp_path: Path) -> None:
    kept = KeptFacts(tmp_path / "old-root" / "facts")
    (tmp_path / "old-root").mkdir()
    module_hex, path = _module_file(tmp_path, make_module(3000, "old"))
    kept.of_module(module_hex, path)
    assert (kept.directory / f"{module_hex}.json").is_file()
    assert kept.prune(lambda _: True) == 0
    assert KeptFacts(tmp_path / "nowhere").prune(lambda _: False) == 0
