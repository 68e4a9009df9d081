"""Fixtures of the catalog tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.catalog import CatalogNode

from csi_wasm.cache.store import ModuleStore
from csi_wasm.cache.volumes import VolumeRecords


@pytest.fixture
def cnode(tmp_path: Path) -> CatalogNode:
    root = tmp_path / "root"
    store = ModuleStore(root)
    store.prepare()
    records = VolumeRecords(root / "volumes")
    records.prepare()
    return CatalogNode(root, store, records)
