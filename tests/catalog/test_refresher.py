"""Tests of csi_wasm.catalog.refresher: the prefetch file, the joined lists, the upkeep."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from support.catalog import HOUR, CatalogNode

from csi_wasm.catalog.refresher import (
    CONFIGMAP_SOURCE,
    FILE_SOURCE,
    CatalogRefresher,
    PrefetchFile,
    PrefetchLists,
)
from csi_wasm.catalog.status import FAILED
from csi_wasm.prefetch.entries import PrefetchEntry


def configmap_volume(directory: Path, generation: int, document: object) -> None:
    """Write ``prefetch.json`` as kubelet updates a mounted ConfigMap: a new ``..<ts>``
    directory, a ``..data_tmp`` symlink renamed over ``..data``; the key links to ``..data``."""
    data_dir = directory / f"..2026_12_04_{generation}"
    data_dir.mkdir()
    (data_dir / "prefetch.json").write_text(json.dumps(document))
    (directory / "..data_tmp").symlink_to(data_dir.name)
    os.rename(directory / "..data_tmp", directory / "..data")
    key = directory / "prefetch.json"
    if not key.is_symlink():
        key.symlink_to("..data/prefetch.json")


def test_the_file_is_read_again_when_kubelet_swaps_its_data(tmp_path: Path) -> None:
    mounted = tmp_path / "config"
    mounted.mkdir()
    configmap_volume(mounted, 1, [{"name": "a", "url": "registry.test/a:v1"}])
    source = PrefetchFile(mounted / "prefetch.json")

    first = source.poll()
    assert first == ([PrefetchEntry("registry.test/a:v1", name="a")], [])
    assert source.poll() is None  # unchanged

    configmap_volume(mounted, 2, [{"name": "b", "url": "registry.test/b:v1"}, 7])
    second = source.poll()
    assert second is not None
    assert second[0] == [PrefetchEntry("registry.test/b:v1", name="b")]
    assert len(second[1]) == 1 and second[1][0].startswith("entry 1 skipped")


def test_a_missing_file_lists_nothing(tmp_path: Path) -> None:
    assert PrefetchFile(tmp_path / "absent.json").poll() == ([], [])


class Recorded:
    def __init__(self) -> None:
        self.lists: list[list[PrefetchEntry]] = []
        self.problems: list[tuple[str, str]] = []

    def set_prefetch(self, entries: Sequence[PrefetchEntry]) -> None:
        self.lists.append(list(entries))

    def problem(self, source: str, message: str) -> None:
        self.problems.append((source, message))


def test_lists_join_their_sources_and_report_problems_to_the_right_one(
    cnode: CatalogNode,
) -> None:
    catalog = cnode.catalog()
    seen = Recorded()
    lists = PrefetchLists(catalog, seen.set_prefetch, [FILE_SOURCE, CONFIGMAP_SOURCE], seen.problem)
    from_file = PrefetchEntry("registry.test/a:v1", name="a")
    bad = PrefetchEntry("registry.test/b:v1", name="B")
    unnamed = PrefetchEntry("registry.test/c:v1")

    lists.update(FILE_SOURCE, [from_file])
    lists.update(CONFIGMAP_SOURCE, [bad, unnamed])

    assert seen.lists == [[from_file], [from_file, unnamed]]
    assert [(source, "'B'" in message) for source, message in seen.problems] == [
        (CONFIGMAP_SOURCE, True)
    ]
    assert {(r.name, r.state) for r in catalog.status().entries} >= {("B", FAILED)}


def test_upkeep_reads_the_file_and_expires_retired_modules(cnode: CatalogNode) -> None:
    catalog = cnode.catalog(grace=HOUR)
    listed = cnode.root / "prefetch.json"
    listed.write_text(json.dumps([{"name": "a", "url": "registry.test/a:v1"}]))
    seen = Recorded()
    lists = PrefetchLists(catalog, seen.set_prefetch, [FILE_SOURCE])
    refresher = CatalogRefresher(catalog, lists, PrefetchFile(listed), interval=10)
    refresher.tick()
    entry = PrefetchEntry("registry.test/a:v1", name="a")
    assert seen.lists == [[entry]]
    v1 = cnode.module("v1")
    cnode.fetched(catalog, entry, v1)

    listed.write_text("[]")
    refresher.tick()
    assert not (cnode.path / "a.wasm").exists()
    assert (cnode.path / "sha256" / f"{v1}.wasm").exists()

    cnode.clock.now += HOUR
    refresher.tick()
    assert not (cnode.path / "sha256" / f"{v1}.wasm").exists()
