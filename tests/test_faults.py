"""Tests of csi_wasm.faults: which OSErrors are the node's, their codes and messages.

The end-to-end behaviour (real read-only, full and descriptor-starved roots under a
running driver) is in tests/server/test_root_faults.py.
"""

from __future__ import annotations

import errno
import logging
import os

import pytest

from csi_wasm.errors import ResourceExhausted, Unavailable
from csi_wasm.faults import (
    FAULT_ERRNOS,
    FaultLog,
    describe,
    disk_fault,
    disk_faults,
    explain,
    naming,
)

PATH = "/var/lib/csi-wasm/volumes/ab.json"


def os_error(code: int, path: str | None = None, path2: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), path, None, path2)


@pytest.mark.parametrize(
    ("code", "kind", "advice"),
    [
        (errno.ENOSPC, ResourceExhausted, "disk is full"),
        (errno.EDQUOT, ResourceExhausted, "quota"),
        (errno.EROFS, Unavailable, "writable again"),
        (errno.EACCES, Unavailable, "owner, mode"),
        (errno.EPERM, Unavailable, "privileges"),
        (errno.EIO, Unavailable, "dmesg"),
        (errno.EMFILE, Unavailable, "open-file limit"),
        (errno.ENFILE, Unavailable, "fs.file-max"),
    ],
)
def test_each_fault_has_its_code_and_a_line_naming_the_path(
    code: int, kind: type, advice: str
) -> None:
    fault = disk_fault(os_error(code, PATH))
    assert type(fault) is kind
    assert fault is not None
    assert fault.message.startswith(f"{PATH}: {os.strerror(code)}; ")
    assert advice in fault.message
    assert fault.message.endswith("kubelet retries")
    assert "\n" not in fault.message


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.EINVAL])
def test_other_errors_are_not_faults(code: int) -> None:
    assert code not in FAULT_ERRNOS
    assert disk_fault(os_error(code, PATH)) is None
    assert explain(os_error(code, PATH)) == f"{PATH}: {os.strerror(code)}"


def test_only_os_errors_are_faults() -> None:
    assert disk_fault(ValueError("EROFS")) is None


def test_a_rename_names_both_paths() -> None:
    error = os_error(errno.EROFS, "/root/tmp/module-1", "/root/modules/ab")
    assert describe(error) == "/root/tmp/module-1 -> /root/modules/ab: Read-only file system"


def test_an_error_of_ours_keeps_its_text() -> None:
    # mounts.py raises OSError(code, "bind-mount <target>: <strerror>"): the path is in the text
    error = OSError(errno.EPERM, "bind-mount /pods/u/mount: Operation not permitted")
    assert describe(error) == "bind-mount /pods/u/mount: Operation not permitted"


def test_disk_faults_raises_the_named_error_with_the_os_error_as_cause() -> None:
    original = os_error(errno.EIO, PATH)
    with pytest.raises(Unavailable) as info, disk_faults():
        raise original
    assert info.value.__cause__ is original
    with pytest.raises(FileNotFoundError), disk_faults():
        raise os_error(errno.ENOENT, PATH)  # not a fault: a bug stays a bug


def test_naming_attaches_the_path_to_a_fault_without_one() -> None:
    with pytest.raises(OSError) as info, naming("/root/tmp/pull-1"):
        raise os_error(errno.ENOSPC)  # what write(2) on a descriptor gives
    assert info.value.filename == "/root/tmp/pull-1"
    with pytest.raises(OSError) as info, naming("/root/tmp/pull-1"):
        raise os_error(errno.EIO, PATH)
    assert info.value.filename == PATH  # an error that names its file keeps it
    with pytest.raises(OSError) as info, naming("/root/tmp/pull-1"):
        raise os_error(errno.ECONNRESET)  # not the file's
    assert info.value.filename is None


def test_a_real_write_to_a_full_disk_is_named() -> None:
    with pytest.raises(OSError) as info, naming("/dev/full"), open("/dev/full", "wb") as out:
        out.write(b"x")
        out.flush()
    fault = disk_fault(info.value)
    assert isinstance(fault, ResourceExhausted)
    assert fault.message.startswith("/dev/full: No space left on device; ")


def test_fault_log_tells_a_lasting_fault_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.faultlog")
    caplog.set_level(logging.INFO, logger="test.faultlog")
    runs = FaultLog(logger, "upkeep")
    runs.succeeded()  # nothing to tell
    for _ in range(3):
        runs.failed(os_error(errno.EROFS, "/root/.lock"))
    runs.failed(os_error(errno.ENOSPC, "/root/tmp/x"))  # another fault: told
    runs.succeeded()
    runs.succeeded()
    bug = KeyError("a bug")
    runs.failed(bug)
    runs.failed(bug)
    lines = [(r.levelname, r.getMessage(), r.__dict__.get("fields")) for r in caplog.records]
    assert lines[:3] == [
        (
            "WARNING",
            "upkeep failed; will try again",
            {"error": explain(os_error(errno.EROFS, "/root/.lock"))},
        ),
        (
            "WARNING",
            "upkeep failed; will try again",
            {"error": explain(os_error(errno.ENOSPC, "/root/tmp/x"))},
        ),
        ("INFO", "upkeep works again", None),
    ]
    assert [r.levelname for r in caplog.records[3:]] == ["ERROR", "ERROR"]  # a bug, every time
    assert all(r.exc_info is None for r in caplog.records[:3])
    assert all(r.exc_info is not None for r in caplog.records[3:])
