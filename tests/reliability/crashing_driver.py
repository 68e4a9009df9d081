"""``csi-wasm serve`` that kills itself with SIGKILL at a chosen point. Tests only.

    CSI_WASM_TEST_CRASH_AT=<point>[:<n>] python tests/reliability/crashing_driver.py serve ...

The process dies (``kill -9`` of itself) the ``n``-th time (default 1) it reaches
``<point>``. Points are recognised at the level of system calls on the driver's own
paths, not by the names of csi_wasm's functions, so the driver needs no change and the
points keep their meaning when its code is refactored:

===================  ==========================================================
``record-written``   a volume record was renamed into ``<root>/volumes/``
``bind``             the bind mount(2) is done, the read-only remount is not
``remount``          the read-only remount is done; not yet checked or answered
``downloaded``       a verified file in ``<root>/tmp/`` is about to be moved into
                     its staging directory (still in ``tmp/``)
``staged``           a complete staging directory is about to be renamed into
                     ``<root>/modules/``
``committed``        a module directory was renamed into ``<root>/modules/``
``indexed``          an index entry was renamed into ``<root>/index/``
``unmounted``        umount2(2) of a target under the pods dir succeeded (unpublish);
                     the target and the record are still there
``target-removed``   a target directory under the pods dir was removed; the record
                     is still there
===================  ==========================================================

Without the variable it is plain ``csi-wasm``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

ENV = "CSI_WASM_TEST_CRASH_AT"
POINTS = (
    "record-written",
    "bind",
    "remount",
    "downloaded",
    "staged",
    "committed",
    "indexed",
    "unmounted",
    "target-removed",
)
MS_REMOUNT = 0x20
MS_BIND = 0x1000


def _flag(argv: Sequence[str], name: str, default: str) -> str:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _under(path: object, directory: str) -> bool:
    text = os.fsdecode(path) if isinstance(path, bytes | str | os.PathLike) else ""
    return os.path.abspath(text).startswith(directory.rstrip("/") + "/")


def install(spec: str, argv: Sequence[str]) -> None:
    point, _, nth_text = spec.partition(":")
    if point not in POINTS:
        raise SystemExit(f"{ENV}: unknown point {point!r}; one of {', '.join(POINTS)}")
    nth = int(nth_text or "1")
    root = os.path.abspath(_flag(argv, "--root", "/var/lib/csi-wasm"))
    pods = os.path.join(os.path.abspath(_flag(argv, "--kubelet-dir", "/var/lib/kubelet")), "pods")
    lock = threading.Lock()
    hits = 0

    def reached(name: str) -> None:
        nonlocal hits
        if name != point:
            return
        with lock:
            hits += 1
            if hits == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    real_replace, real_rename, real_rmdir = os.replace, os.rename, os.rmdir
    tmp, modules = os.path.join(root, "tmp"), os.path.join(root, "modules")

    def moved(src: Any, dst: Any) -> None:
        if _under(dst, os.path.join(root, "volumes")):
            reached("record-written")
        elif _under(dst, os.path.join(root, "index")):
            reached("indexed")
        elif _under(dst, modules) and _under(src, tmp):
            reached("committed")

    def before_move(src: Any, dst: Any) -> None:
        if _under(src, tmp) and _under(dst, tmp):
            reached("downloaded")
        elif _under(src, tmp) and _under(dst, modules):
            reached("staged")

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        before_move(src, dst)
        real_replace(src, dst, *args, **kwargs)
        moved(src, dst)

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        before_move(src, dst)
        real_rename(src, dst, *args, **kwargs)
        moved(src, dst)

    def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        real_rmdir(path, *args, **kwargs)
        if _under(path, pods):
            reached("target-removed")

    os.replace, os.rename, os.rmdir = replace, rename, rmdir

    from csi_wasm import mounts  # noqa: PLC0415 - after the os hooks, before serving

    libc: Any = mounts._libc
    real_mount: Callable[..., int] = libc.mount
    real_umount2: Callable[..., int] = libc.umount2

    def mount(source: Any, target: Any, fstype: Any, flags: int, data: Any) -> int:
        result = real_mount(source, target, fstype, flags, data)
        if result == 0 and flags & MS_BIND:
            reached("remount" if flags & MS_REMOUNT else "bind")
        return result

    def umount2(target: Any, flags: int) -> int:
        result = real_umount2(target, flags)
        if result == 0 and _under(target, pods):
            reached("unmounted")
        return result

    libc.mount = mount
    libc.umount2 = umount2


def main() -> int:
    argv = sys.argv[1:]
    spec = os.environ.get(ENV, "")
    if spec:
        install(spec, argv)
    from csi_wasm.cli import main as csi_wasm_main  # noqa: PLC0415

    return csi_wasm_main(argv)


if __name__ == "__main__":
    sys.exit(main())
