"""Two versions of the driver side by side, calls alternated: a before/after on a noisy machine.

    PYTHONPATH=tests python3 benchmarks/compare_drivers.py --before OLD_TREE --after NEW_TREE

Each tree is a checkout with its own ``.venv`` (``python3 -m venv .venv && .venv/bin/pip
install -e .``); its driver runs as ``<tree>/.venv/bin/python -m csi_wasm serve`` from
that tree. Both serve one loopback registry. Warm publishes and Probes alternate between
the two drivers call by call, cold publishes of fresh 4 MiB modules likewise, so both see
the same background load. Printed: client p50 (p90) of each, the ratio, and each
driver's own handler time (``duration_ms`` of its log lines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from support.driver import NodeDirs, connect, wait_for
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2

MIB = 1024 * 1024
SIDES = ("before", "after")


@contextmanager
def driver(tree: Path, dirs: NodeDirs, registry: Registry, log: Path) -> Iterator[Kubelet]:
    args = [str(tree / ".venv/bin/python"), "-m", "csi_wasm", "serve", *dirs.serve_flags()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*args, "--insecure-registry", registry.host], cwd=tree, stdout=out, stderr=out, env=env
        )
    try:
        wait_for(dirs.socket.exists, what="the driver's socket")
        with connect(dirs) as kubelet:
            yield kubelet
    finally:
        process.terminate()
        process.wait(timeout=20)
        dirs.cleanup_mounts()


def alternate(count: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    for i in range(count):
        yield i, SIDES if i % 2 == 0 else SIDES[::-1]


def handler_ms(log: Path) -> list[float]:
    values = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("method") == "NodePublishVolume" and record.get("cached"):
            values.append(float(record["duration_ms"]))
    return values


def show(name: str, data: dict[str, list[float]], scale: float = 1e3) -> None:
    cells = []
    for side in SIDES:
        ordered = sorted(data[side])
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        cells.append(f"{side} {statistics.median(ordered) * scale:8.3f} ({p90 * scale:8.3f})")
    ratio = statistics.median(data["after"]) / statistics.median(data["before"])
    print(f"  {name:32}{'   '.join(cells)}   after/before {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the old tree")
    parser.add_argument("--after", type=Path, required=True, help="the new tree")
    parser.add_argument("--warm", type=int, default=600, help="warm publishes per driver")
    parser.add_argument("--cold", type=int, default=10, help="cold publishes per driver")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory(prefix="csi-wasm-compare-") as work, ExitStack() as stack:
        base = Path(work)
        registry = stack.enter_context(Registry(base / "registry"))
        kubelets = {
            side: stack.enter_context(
                driver(trees[side], NodeDirs(base / side), registry, base / f"{side}.log")
            )
            for side in SIDES
        }
        small = push_wasm_artifact(registry, "compare/warm", "v1", make_module(64 * 1024, "w"))
        for kubelet in kubelets.values():
            kubelet.publish(kubelet.new_pod(name="fill"), {"url": small.reference})
        warm: dict[str, list[float]] = {side: [] for side in SIDES}
        probe: dict[str, list[float]] = {side: [] for side in SIDES}
        pods = {s: [k.new_pod(name=f"w{i}") for i in range(args.warm)] for s, k in kubelets.items()}
        for i, order in alternate(args.warm):
            for side in order:
                kubelet = kubelets[side]
                started = time.perf_counter()
                kubelet.publish(pods[side][i], {"url": small.reference})
                warm[side].append(time.perf_counter() - started)
                started = time.perf_counter()
                kubelet.identity.Probe(csi_pb2.ProbeRequest())
                probe[side].append(time.perf_counter() - started)
        cold: dict[str, list[float]] = {side: [] for side in SIDES}
        for i, order in alternate(args.cold):
            for side in order:
                module = make_module(4 * MIB, f"{side}{i}-{time.time_ns()}")
                fresh = push_wasm_artifact(registry, f"compare/cold-{side}", f"c{i}", module)
                kubelet = kubelets[side]
                pod = kubelet.new_pod(name="cold")
                started = time.perf_counter()
                kubelet.publish(pod, {"url": fresh.reference})
                cold[side].append(time.perf_counter() - started)
                kubelet.unpublish(pod)
        for side, kubelet in kubelets.items():
            for pod in pods[side]:
                kubelet.unpublish(pod)
        print(f"before: {trees['before']}\nafter:  {trees['after']}")
        print(f"load average {Path('/proc/loadavg').read_text().split()[0]}; p50 (p90), ms")
        show("warm publish", warm)
        show("Probe", probe)
        show("cold 4 MiB publish", cold)
        handlers = {side: [v / 1e3 for v in handler_ms(base / f"{side}.log")] for side in SIDES}
        show("warm publish, driver's handler", handlers)


if __name__ == "__main__":
    main()
