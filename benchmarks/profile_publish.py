"""Where a publish spends its time: py-spy on the driver process, and the RPC split.

    ./dev bench            (or: PYTHONPATH=tests python3 benchmarks/profile_publish.py)

1. Warm publish: the client's round trip next to the time the driver's handler took
   (its own ``duration_ms`` log field) and next to trivial RPCs (NodeGetInfo, Probe):
   the difference is gRPC's Python server and the channel, not csi-wasm.
2. A py-spy profile (``py-spy record --idle``, 1000 Hz) of the driver during warm
   publishes, then during cold publishes; the inclusive share of the main frames of
   the publish steps on the worker threads (warm) and of the pull threads (cold).
3. A py-spy profile of the GIL (``--gil``: only samples of the thread holding it)
   during herds of 100 pods on one uncached 4 MiB module: which threads hold it, and
   the share of the RPC handler's parts on the event loop's thread.
   2 and 3 are skipped, with a note, when py-spy is not installed (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_herd import herd
from loopback import loopback_node
from support.driver import DriverProcess, connect
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2

MIB = 1024 * 1024
# Frames worth naming, by substring of py-spy's "function (file)" text.
WARM_FRAMES = [
    "NodeService._confine",
    "VolumeRecords.get",
    "Puller.find",
    "NodeService._mount",
    "VolumeRecords.put",
    "Path.mkdir",
    "bind_read_only (csi_wasm/mounts.py)",
    "shows_read_only",
    "parse_attributes",
    "Keychain.from_secrets",
    "Path.resolve",
    "mkstemp",
]
# Parts of the RPC handler on the event loop's thread, during a herd.
HERD_FRAMES = [
    "handler.<locals>.wrapper",
    "Logger.log",
    "Pool.run",
    "settled",
    "NodeService._finish",
]
COLD_FRAMES = [
    "Puller._resolve_manifest",
    "RegistryClient.fetch_blob",
    "HTTPResponse._read_status",
    "RegistryClient._stream_into",
    "commit_module",
    "_write_index",
    "fsync (libc",
    "os_fsync",
]


def py_spy() -> str | None:
    """py-spy beside this interpreter (a venv's bin/, where ./dev bench installs it), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Spy:
    def __init__(self, executable: str, pid: int, out: Path, *flags: str) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [
                *(executable, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw"),
                *("--threads", "--idle", "--native", *flags, "--output", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches asynchronously; nothing to wait on

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)


def shares(raw: Path, thread_filter: str, frames: list[str]) -> tuple[int, dict[str, float]]:
    """Inclusive share of each frame among the samples whose stack has ``thread_filter``."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if thread_filter not in stack or not number.isdigit():
            continue
        total += int(number)
        plain = re.sub(r":\d+\)", ")", stack)
        for frame in frames:
            if frame in plain:
                counts[frame] += int(number)
    return total, {frame: counts[frame] / max(total, 1) for frame in frames}


def handler_ms(log: str, method: str) -> list[float]:
    values = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("method") == method and record.get("code") == "OK":
            values.append(float(record["duration_ms"]))
    return values


def split(kubelet: Kubelet, driver: DriverProcess, reference: str, count: int) -> None:
    attributes = {"url": reference}
    pods = [kubelet.new_pod(name=f"split-{i}") for i in range(count)]
    seen = len(handler_ms(driver.log(), "NodePublishVolume"))
    client = []
    for pod in pods:
        started = time.perf_counter()
        kubelet.publish(pod, attributes)
        client.append(time.perf_counter() - started)
    probe, info = [], []
    for _ in range(count):
        started = time.perf_counter()
        kubelet.identity.Probe(csi_pb2.ProbeRequest())
        probe.append(time.perf_counter() - started)
        started = time.perf_counter()
        kubelet.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        info.append(time.perf_counter() - started)
    for pod in pods:
        kubelet.unpublish(pod)
    server = handler_ms(driver.log(), "NodePublishVolume")[seen:]
    print(f"\nwarm publish, where the time goes: p50 over {count} calls (ms)")
    print(f"  {'client round trip':40}{statistics.median(client) * 1e3:8.3f}")
    print(f"  {'driver handler (duration_ms in its log)':40}{statistics.median(server):8.3f}")
    print(f"  {'NodeGetInfo round trip (empty handler)':40}{statistics.median(info) * 1e3:8.3f}")
    print(f"  {'Probe round trip':40}{statistics.median(probe) * 1e3:8.3f}")


def profile(
    kubelet: Kubelet, driver: DriverProcess, registry: Registry, reference: str, work: Path
) -> None:
    executable = py_spy()
    if executable is None:
        print("\npy-spy is not installed: no profile (pip install py-spy)")
        return
    assert driver.process is not None
    pods = [kubelet.new_pod(name=f"prof-{i}") for i in range(1500)]
    spy = Spy(executable, driver.process.pid, work / "warm.txt")
    for pod in pods:
        kubelet.publish(pod, {"url": reference})
    spy.stop()
    for pod in pods:
        kubelet.unpublish(pod)
    total, found = shares(spy.out, "NodeService._start", WARM_FRAMES)
    print(f"\npy-spy, warm publish steps on worker threads ({total} samples): inclusive share")
    for frame, share in found.items():
        print(f"  {share * 100:5.1f}%  {frame}")

    refs = [
        push_wasm_artifact(
            registry, f"prof/cold{i}", "v1", make_module(4 * MIB, f"p{i}-{time.time_ns()}")
        ).reference
        for i in range(20)
    ]
    spy = Spy(executable, driver.process.pid, work / "cold.txt")
    for ref in refs:
        pod = kubelet.new_pod(name="cold")
        kubelet.publish(pod, {"url": ref})
        kubelet.unpublish(pod)
    spy.stop()
    total, found = shares(spy.out, "Puller._run", COLD_FRAMES)
    print(f"\npy-spy, cold 4 MiB publish pull threads ({total} samples): inclusive share")
    for frame, share in found.items():
        print(f"  {share * 100:5.1f}%  {frame}")
    herd_profile(kubelet, driver, registry, executable, work)


def herd_profile(
    kubelet: Kubelet, driver: DriverProcess, registry: Registry, executable: str, work: Path
) -> None:
    assert driver.process is not None
    refs = [
        push_wasm_artifact(
            registry, f"prof/herd{i}", "v1", make_module(4 * MIB, f"h{i}-{time.time_ns()}")
        ).reference
        for i in range(4)
    ]
    spy = Spy(executable, driver.process.pid, work / "herd.txt", "--gil")
    for ref in refs:
        herd(kubelet, ref, 100)
    spy.stop()
    threads: collections.Counter[str] = collections.Counter()
    for line in spy.out.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if number.isdigit():
            # "thread (12345): local_0" -> "local"; names without a number stay whole
            name = stack.split(";")[0].partition(": ")[2]
            threads[re.sub(r"[_ ].*", "", name)] += int(number)
    total = sum(threads.values())
    print(f"\npy-spy --gil, 4 herds of 100 pods ({total} samples): the GIL's holder")
    for name, count in threads.most_common(6):
        print(f"  {count / max(total, 1) * 100:5.1f}%  {name}")
    loop_total, found = shares(spy.out, "rpc-loop", HERD_FRAMES)
    print(f"  of the event loop's thread ({loop_total} samples), inclusive share")
    for frame, share in found.items():
        print(f"  {share * 100:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="calls for the RPC split")
    args = parser.parse_args()
    with loopback_node("csi-wasm profile") as node:
        reference = push_wasm_artifact(
            node.registry, "prof/warm", "v1", make_module(64 * 1024, "w")
        ).reference
        with connect(node.dirs) as kubelet:
            kubelet.publish(kubelet.new_pod(name="fill"), {"url": reference})
            split(kubelet, node.driver, reference, args.count)
            profile(kubelet, node.driver, node.registry, reference, node.base)


if __name__ == "__main__":
    main()
