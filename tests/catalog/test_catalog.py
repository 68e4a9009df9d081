"""Tests of csi_wasm.catalog.catalog: names shown, swapped, retired, refused, restored.

Real module store and catalog directory on disk; a clock the test moves.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest
from support.catalog import HOUR, CatalogNode

from csi_wasm.cache.fsck import check_store
from csi_wasm.cache.gc import CacheCollector, gc_command
from csi_wasm.catalog.directory import held_digests
from csi_wasm.catalog.status import FAILED, PENDING, READY
from csi_wasm.errors import NotFound
from csi_wasm.prefetch.entries import PrefetchEntry
from csi_wasm.puller import PulledModule
from csi_wasm.settings import CacheSettings

ADD_HEADER = PrefetchEntry("oci://registry.test/acme/add-header:stable", name="add-header")
WAF = PrefetchEntry("oci://registry.test/acme/waf:v1", name="waf")
UNNAMED = PrefetchEntry("oci://registry.test/acme/other:v1")


def listing(path: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files
    }


def test_a_fetched_entry_is_a_hard_link_of_the_cached_module(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    accepted, refused = catalog.set_entries([ADD_HEADER, UNNAMED])
    assert accepted == [ADD_HEADER, UNNAMED] and refused == []
    v1 = cnode.module("v1")

    cnode.fetched(catalog, ADD_HEADER, v1)

    module = os.stat(cnode.module_file(v1))
    for shown in (cnode.path / "add-header.wasm", cnode.path / "sha256" / f"{v1}.wasm"):
        info = os.stat(shown)
        assert (info.st_dev, info.st_ino) == (module.st_dev, module.st_ino)
        assert stat.S_IMODE(info.st_mode) == 0o444
    assert listing(cnode.path) == {"add-header.wasm", f"sha256/{v1}.wasm"}
    (row,) = catalog.status().entries
    assert (row.name, row.digest, row.state, row.reason) == (
        "add-header",
        f"sha256:{v1}",
        READY,
        None,
    )
    assert row.url == ADD_HEADER.url


def test_a_named_tag_is_followed_unless_the_entry_says_if_not_present() -> None:
    assert ADD_HEADER.request().pull_policy.value == "Always"
    pinned = PrefetchEntry(ADD_HEADER.url, image_pull_policy="IfNotPresent", name="a")
    assert pinned.request().pull_policy.value == "IfNotPresent"
    assert PrefetchEntry(ADD_HEADER.url).request().pull_policy.value == "IfNotPresent"


def test_a_new_version_swaps_the_name_and_the_old_one_stays_for_the_grace_period(
    cnode: CatalogNode, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = cnode.catalog(grace=24 * HOUR)
    catalog.set_entries([ADD_HEADER])
    v1, v2 = cnode.module("v1"), cnode.module("v2")
    cnode.fetched(catalog, ADD_HEADER, v1)

    with caplog.at_level("INFO"):
        cnode.fetched(catalog, ADD_HEADER, v2)

    assert os.path.samefile(cnode.path / "add-header.wasm", cnode.module_file(v2))
    assert set(held_digests(cnode.path)) == {v1, v2}
    swap = [r for r in caplog.records if r.getMessage() == "catalog entry now shows a new module"]
    assert swap[-1].fields == {  # type: ignore[attr-defined]
        "name": "add-header",
        "url": ADD_HEADER.url,
        "old_digest": f"sha256:{v1}",
        "new_digest": f"sha256:{v2}",
    }
    # Within the grace period v1 stays, and GC keeps it even with no budget at all.
    cnode.clock.now += 24 * HOUR - 1
    assert catalog.expire() == []
    collector = CacheCollector(
        cnode.store, cnode.records, CacheSettings(max_bytes=0, ttl=0.001), clock=cnode.clock
    )
    collector.add_pin_source(lambda: held_digests(cnode.path))
    assert collector.collect().evicted == ()
    assert cnode.store.has_module(v1)
    # Then it leaves the catalog, and GC may take it.
    cnode.clock.now += 1
    assert catalog.expire() == [v1]
    assert set(held_digests(cnode.path)) == {v2}
    assert [e.digest for e in collector.collect().evicted] == [v1]
    assert cnode.store.has_module(v2)


def test_a_failing_new_version_keeps_the_old_one_and_says_why(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER])
    v1 = cnode.module("v1")
    cnode.fetched(catalog, ADD_HEADER, v1)
    before = os.stat(cnode.path / "add-header.wasm").st_ino

    def broken(_request: object) -> PulledModule:
        raise NotFound("manifest registry.test/acme/add-header:stable not found")

    with pytest.raises(NotFound):
        catalog.observing(broken)(ADD_HEADER.request())

    assert os.stat(cnode.path / "add-header.wasm").st_ino == before
    (row,) = catalog.status().entries
    assert (row.state, row.digest) == (FAILED, f"sha256:{v1}")
    assert row.reason == "manifest registry.test/acme/add-header:stable not found"
    assert catalog.counts() == {READY: 0, PENDING: 0, FAILED: 1}


def test_hostile_names_are_refused_per_entry(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    hostile = ["../x", "a/b", "x" * 64, "Add-Header"]
    entries = [
        PrefetchEntry(f"oci://registry.test/acme/h{i}:v1", name=n) for i, n in enumerate(hostile)
    ]
    duplicate = PrefetchEntry("oci://registry.test/acme/other:v2", name="add-header")

    accepted, refused = catalog.set_entries([*entries, ADD_HEADER, duplicate])

    assert accepted == [ADD_HEADER]
    assert [entry for entry, _ in refused] == [*entries, duplicate]
    rows = {row.name: row for row in catalog.status().entries if row.state == FAILED}
    assert set(rows) == {*hostile, "add-header"}
    assert "not a lowercase DNS label" in (rows["../x"].reason or "")
    assert "at most 63" in (rows["x" * 64].reason or "")
    assert "already used by an earlier entry" in (rows["add-header"].reason or "")
    cnode.fetched(catalog, ADD_HEADER, cnode.module("v1"))
    assert not (cnode.root / "catalog" / "x.wasm").exists()
    assert sorted(os.listdir(cnode.path)) == ["add-header.wasm", "sha256"]
    assert catalog.counts() == {READY: 1, PENDING: 0, FAILED: 5}


def test_removed_entries_disappear_only_once_the_list_is_complete(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER, WAF])
    cnode.fetched(catalog, ADD_HEADER, cnode.module("v1"))
    cnode.fetched(catalog, WAF, cnode.module("waf"))

    catalog.set_entries([ADD_HEADER], complete=False)
    assert (cnode.path / "waf.wasm").exists()

    catalog.set_entries([ADD_HEADER], complete=True)
    assert not (cnode.path / "waf.wasm").exists()
    assert [row.name for row in catalog.status().entries] == ["add-header"]
    assert (cnode.path / "sha256" / f"{cnode.module('waf')}.wasm").exists()  # grace


def test_a_changed_entry_keeps_its_module_until_the_new_one_is_fetched(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER])
    v1 = cnode.module("v1")
    cnode.fetched(catalog, ADD_HEADER, v1)
    moved = PrefetchEntry("oci://registry.test/acme/add-header:v2", name="add-header")

    catalog.set_entries([moved])

    (row,) = catalog.status().entries
    assert (row.state, row.digest, row.url) == (PENDING, f"sha256:{v1}", moved.url)
    cnode.fetched(catalog, ADD_HEADER, cnode.module("stale"))  # the old request: ignored
    assert os.path.samefile(cnode.path / "add-header.wasm", cnode.module_file(v1))


def test_a_restart_takes_up_the_catalog_as_it_was_and_repairs_missing_names(
    cnode: CatalogNode,
) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER, WAF])
    v1, waf = cnode.module("v1"), cnode.module("waf")
    cnode.fetched(catalog, ADD_HEADER, v1)
    cnode.fetched(catalog, WAF, waf)
    (cnode.path / "waf.wasm").unlink()  # as a power cut might leave it
    (cnode.path / ".add-header.wasm.dead").touch()  # an interrupted swap

    again = cnode.catalog()

    assert os.path.samefile(cnode.path / "waf.wasm", cnode.module_file(waf))
    assert not (cnode.path / ".add-header.wasm.dead").exists()
    assert [(r.name, r.state, r.digest) for r in again.status().entries] == [
        ("add-header", READY, f"sha256:{v1}"),
        ("waf", READY, f"sha256:{waf}"),
    ]
    # The list arrives: same entries, nothing changes; no fetch needed to serve them.
    again.set_entries([ADD_HEADER, WAF])
    assert again.counts()[READY] == 2


def test_fsck_takes_out_what_it_quarantines(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER])
    v1 = cnode.module("v1")
    cnode.fetched(catalog, ADD_HEADER, v1)
    damaged = cnode.module_file(v1)
    os.chmod(damaged, 0o644)
    with open(damaged, "r+b") as handle:
        handle.seek(20)
        handle.write(b"\xff")

    report = check_store(cnode.store)

    assert sorted(report.damaged[0].catalog_removed) == ["add-header.wasm", f"sha256/{v1}.wasm"]
    assert listing(cnode.path) == set()
    catalog.repair()
    (row,) = catalog.status().entries
    assert (row.state, row.digest) == (FAILED, None)
    assert "fsck" in (row.reason or "")


def test_gc_with_no_budget_and_no_ttl_never_touches_the_catalog(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER, WAF])
    shown = [cnode.module("v1"), cnode.module("waf")]
    cnode.fetched(catalog, ADD_HEADER, shown[0])
    cnode.fetched(catalog, WAF, shown[1])
    unlisted = cnode.module("unlisted")
    lines: list[str] = []

    assert gc_command(cnode.root, CacheSettings(max_bytes=0, ttl=0.001), out=lines.append) == 0

    assert all(cnode.store.has_module(digest) for digest in shown)
    assert not cnode.store.has_module(unlisted)
    assert listing(cnode.path) == {"add-header.wasm", "waf.wasm"} | {
        f"sha256/{d}.wasm" for d in shown
    }


def test_readers_never_see_a_partial_missing_or_unknown_module_through_100_swaps(
    cnode: CatalogNode,
) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER])
    versions = [cnode.module(f"v{i}", size=64 * 1024 + i) for i in range(4)]
    cnode.fetched(catalog, ADD_HEADER, versions[0])
    known = set(versions)
    target = cnode.path / "add-header.wasm"
    stop = threading.Event()
    seen: list[set[str]] = [set() for _ in range(4)]
    errors: list[str] = []

    def read(seen_here: set[str]) -> None:
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except OSError as error:
                errors.append(f"open/read failed: {error}")
                return
            digest = hashlib.sha256(data).hexdigest()
            if digest not in known:
                errors.append(f"unknown content of {len(data)} bytes")
                return
            seen_here.add(digest)

    readers = [threading.Thread(target=read, args=(s,)) for s in seen]
    for reader in readers:
        reader.start()
    try:
        for swap in range(1, 101):
            cnode.fetched(catalog, ADD_HEADER, versions[swap % len(versions)])
    finally:
        stop.set()
        for reader in readers:
            reader.join(10)
    assert errors == []
    assert all(s for s in seen)  # every reader read
    assert os.path.samefile(target, cnode.module_file(versions[100 % len(versions)]))


def test_repair_names_the_entries_to_fetch_again(cnode: CatalogNode) -> None:
    catalog = cnode.catalog()
    catalog.set_entries([ADD_HEADER, WAF])
    v1, waf = cnode.module("v1"), cnode.module("waf")
    cnode.fetched(catalog, ADD_HEADER, v1)
    cnode.fetched(catalog, WAF, waf)
    (cnode.path / "waf.wasm").unlink()  # its sha256/ link (and the store) still hold it
    for path in (cnode.path / "add-header.wasm", cnode.path / "sha256" / f"{v1}.wasm"):
        path.unlink()
    cnode.store.quarantine(v1, "test")  # as fsck leaves it

    assert catalog.repair() == [ADD_HEADER.request()]
    assert os.path.samefile(cnode.path / "waf.wasm", cnode.module_file(waf))
    rows = {row.name: row for row in catalog.status().entries}
    assert (rows["add-header"].state, rows["add-header"].digest) == (FAILED, None)
    assert rows["waf"].state == READY
