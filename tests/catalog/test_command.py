"""Tests of csi-wasm catalog: the status file, as text and JSON, and the exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.catalog import CatalogNode

from csi_wasm.catalog.command import catalog_command
from csi_wasm.cli import main
from csi_wasm.prefetch.entries import PrefetchEntry

ENTRY = PrefetchEntry("oci://registry.test/acme/add-header:stable", name="add-header")


def test_exit_zero_only_when_every_entry_is_ready(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ENTRY])
    lines: list[str] = []
    assert catalog_command(cnode.root, out=lines.append) == 1
    assert "pending" in lines[0]

    v1 = cnode.module("v1")
    cnode.fetched(catalog, ENTRY, v1)
    lines.clear()
    assert catalog_command(cnode.root, as_json=True, out=lines.append) == 0
    (entry,) = json.loads(lines[0])["entries"]
    assert entry == {
        "name": "add-header",
        "url": ENTRY.url,
        "digest": f"sha256:{v1}",
        "state": "ready",
        "reason": None,
        "since": "2033-05-18T03:33:20Z",
    }


def test_a_failed_entry_shows_the_version_served_and_the_reason(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ENTRY])
    v1 = cnode.module("v1")
    cnode.fetched(catalog, ENTRY, v1)
    catalog.failed(ENTRY.request(), "registry.test is unreachable")
    lines: list[str] = []

    assert catalog_command(cnode.root, out=lines.append) == 1

    assert f"failed   sha256:{v1}" in lines[0]
    assert "reason: registry.test is unreachable" in lines[0]


def test_the_command_line_reads_the_root_without_a_socket(
    cnode: CatalogNode, capsys: pytest.CaptureFixture[str]
) -> None:
    cnode.catalog().set_entries([])
    assert main(["catalog", "--root", str(cnode.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"entries": []}


def test_no_status_is_not_ready(tmp_path: Path) -> None:
    lines: list[str] = []
    assert catalog_command(tmp_path, out=lines.append) == 1
    assert "no catalog status" in lines[0]
