"""A real module store and node catalog on disk, with a clock the test moves."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from csi_wasm.cache.store import MODULE_FILE, ModuleStore
from csi_wasm.cache.volumes import VolumeRecords
from csi_wasm.catalog.catalog import Catalog
from csi_wasm.catalog.directory import catalog_dir
from csi_wasm.prefetch.entries import PrefetchEntry
from support.wasm import make_module

HOUR = 3600.0

@dataclass
class Clock:
    now: float = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now

@dataclass
class CatalogNode:
    root: Path
    store: ModuleStore
    records: VolumeRecords
    clock: Clock = field(default_factory=Clock)

    def module(self, seed: str, size: int = 2048) -> str:
        """Commit a module to the store, as a pull would; its hex digest."""
        data = make_module(size, seed)
        module_hex = hashlib.sha256(data).hexdigest()
        with self.store.temp_file() as (path, fd):
            os.write(fd, data)
            self.store.commit_module(path, module_hex)
        return module_hex

    def module_file(self, module_hex: str) -> Path:
        return self.store.module_dir(module_hex) / MODULE_FILE

    def catalog(self, grace: float = 24 * HOUR) -> Catalog:
        catalog = Catalog(catalog_dir(self.root), self.store, grace=grace, clock=self.clock)
        catalog.prepare()
        return catalog

    def fetched(self, catalog: Catalog, entry: PrefetchEntry, module_hex: str) -> None:
        catalog.fetched(entry.request(), module_hex, self.module_file(module_hex))

    @property
    def path(self) -> Path:
        return catalog_dir(self.root)

