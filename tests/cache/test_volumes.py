"""Tests of csi_wasm.cache.volumes: one crash-safe JSON record per published volume."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords

MODULE_HEX = "ab" * 32


def record(
    volume_id: str = "csi-0123", *, sha256: str | None = None, module: str = MODULE_HEX
) -> VolumeRecord:
    return VolumeRecord(
        volume_id=volume_id,
        target_path=f"/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/{volume_id[:20]}/mount",
        url="oci://ghcr.io/acme/f:v1",
        sha256=sha256,
        module=module,
        pod="shop/web-0",
    )


@pytest.fixture
def records(tmp_path: Path) -> VolumeRecords:
    r = VolumeRecords(tmp_path / "volumes")
    r.prepare()
    return r


def files(records: VolumeRecords) -> list[str]:
    return sorted(os.listdir(records.directory))


def test_prepare_creates_directory(tmp_path: Path) -> None:
    r = VolumeRecords(tmp_path / "a" / "b" / "volumes")
    r.prepare()
    r.prepare()
    assert r.directory.is_dir()
    assert r.all() == []


def test_round_trip(records: VolumeRecords) -> None:
    first = record("vol-1")
    second = record("vol-2", sha256="cd" * 32)
    assert records.get("vol-1") is None
    records.put(first)
    records.put(second)
    assert records.get("vol-1") == first
    assert records.get("vol-2") == second
    assert sorted(records.all(), key=lambda r: r.volume_id) == [first, second]

    records.delete("vol-1")
    assert records.get("vol-1") is None
    assert records.all() == [second]
    assert len(files(records)) == 1


def test_put_overwrites(records: VolumeRecords) -> None:
    records.put(record("vol", module="00" * 32))
    newer = record("vol", module="11" * 32)
    records.put(newer)
    assert records.get("vol") == newer
    assert records.all() == [newer]


def test_delete_missing_is_fine(records: VolumeRecords) -> None:
    records.delete("never-existed")
    assert records.all() == []


def test_record_file_is_plain_json(records: VolumeRecords) -> None:
    rec = record("vol", sha256="cd" * 32)
    records.put(rec)
    (name,) = files(records)
    data = json.loads((records.directory / name).read_bytes())
    assert data == asdict(rec)
    assert stat.S_IMODE((records.directory / name).stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "volume_id",
    [
        "a/b/c",
        "../../../etc/passwd",
        "/abs/path",
        ".",
        "..",
        "vol with spaces\nand newline",
        "вольюм-томик-🦀",
        "\\back\\slash",
        "x" * 5000,
        "csi-" + "\x00".join("abc"),
    ],
)
def test_volume_ids_are_safe_file_names(records: VolumeRecords, volume_id: str) -> None:
    rec = record(volume_id)
    records.put(rec)
    assert records.get(volume_id) == rec
    (name,) = files(records)
    assert re.fullmatch(r"[0-9a-f]{64}\.json", name)
    assert [p for p in records.directory.parent.rglob("*") if p != records.directory] == [
        records.directory / name
    ]
    records.delete(volume_id)
    assert files(records) == []


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_any_volume_id_round_trips(volume_id: str) -> None:
    import tempfile  # noqa: PLC0415 - hypothesis forbids function-scoped fixtures

    with tempfile.TemporaryDirectory() as directory:
        r = VolumeRecords(Path(directory))
        rec = record(volume_id)
        r.put(rec)
        assert r.get(volume_id) == rec
        assert r.all() == [rec]
        assert len(os.listdir(directory)) == 1


def test_record_under_another_ids_file_is_not_returned(records: VolumeRecords) -> None:
    """A file whose content names another volume (copied by hand, say) does not answer."""
    records.put(record("vol-a"))
    (name,) = files(records)
    os.rename(records.directory / name, records._path("vol-b"))
    assert records.get("vol-b") is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"\xff\xfe\x00\x01",
        b"[]",
        b'"text"',
        b"null",
        b'{"volume_id": "x"}',
        json.dumps({**asdict(record("z")), "from_the_future": 1}).encode(),
    ],
)
def test_corrupt_records_are_skipped_by_all(records: VolumeRecords, content: bytes) -> None:
    good = record("good")
    records.put(good)
    (records.directory / ("f" * 64 + ".json")).write_bytes(content)
    assert records.all() == [good]


def test_all_ignores_other_files(records: VolumeRecords) -> None:
    good = record("good")
    records.put(good)
    (records.directory / "README").write_text("not a record")
    (records.directory / ".vol.json.tmp123").write_text("{}")
    assert records.all() == [good]


def test_all_survives_unreadable_entry(records: VolumeRecords) -> None:
    good = record("good")
    records.put(good)
    (records.directory / "sub.json").mkdir()
    assert records.all() == [good]


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"volume_id": "vol"}'])
def test_get_of_corrupt_record_is_none(records: VolumeRecords, content: bytes) -> None:
    records._path("vol").write_bytes(content)
    assert records.get("vol") is None


def test_same_request() -> None:
    base = record("v")
    assert base.same_request(replace(base, module="00" * 32, pod="other/pod", volume_id="w"))
    assert not base.same_request(replace(base, target_path="/elsewhere"))
    assert not base.same_request(replace(base, url="oci://ghcr.io/acme/f:v2"))
    assert not base.same_request(replace(base, sha256=MODULE_HEX))


def test_records_are_written_without_fsync(
    records: VolumeRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warm publish keeps fsync off its path: a reboot removes the mounts anyway."""
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    records.put(record("vol"))
    records.delete("vol")
    assert calls == []
    assert records.all() == []


def test_an_adopted_record_matches_any_request_at_its_target() -> None:
    adopted = replace(record("v"), url="", pod="", adopted=True)
    assert adopted.matches(replace(record("v"), url="oci://ghcr.io/acme/f:v9"))
    assert not adopted.matches(replace(record("v"), target_path="/elsewhere"))
    assert record("v").matches(record("v"))
    assert not record("v").matches(replace(record("v"), url="oci://ghcr.io/acme/f:v2"))


def test_records_without_the_adopted_field_still_load(records: VolumeRecords) -> None:
    data = asdict(record("old"))
    del data["adopted"]  # written by an older driver
    (records.directory / "old.json").write_text(json.dumps(data))
    [loaded] = records.all()
    assert not loaded.adopted


def test_modules_in_use(records: VolumeRecords) -> None:
    records.put(record("a", module="aa" * 32))
    records.put(record("b", module="aa" * 32))
    records.put(record("c", module="bb" * 32))
    assert records.modules() == {"aa" * 32, "bb" * 32}


def test_all_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert VolumeRecords(tmp_path / "never-prepared").all() == []
