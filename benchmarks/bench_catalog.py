"""The node catalog, measured next to references in the same run.

    ./dev bench catalog    (or: PYTHONPATH=tests .venv/bin/python benchmarks/bench_catalog.py)

1. Publish cost: a catalog volume (`{catalog: node}`) next to a plain warm publish of a
   cached module (both: one record, one read-only bind), p50/p99 over N each, interleaved.
2. Rollout delay: a tag under a catalog entry is moved; the time until a pod that mounts
   the catalog reads the new module through `<name>.wasm`, next to the refresh interval
   (`--prefetch-refresh`). A tag is re-resolved once per interval (with up to 10% jitter),
   so the delay is spread over [0, interval] plus one pull of the new module.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from functools import partial
from pathlib import Path

from bench_publish import percentile, timed
from loopback import loopback_node
from support.driver import connect
from support.kubelet import Kubelet, PodVolume
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

CATALOG = {"catalog": "node"}
REPO = "bench/catalog"


def publish_cost(kubelet: Kubelet, registry: Registry, count: int) -> None:
    pushed = push_wasm_artifact(registry, "bench/plain", "v1", make_module(64 * 1024, "plain"))
    plain = {"url": pushed.reference}
    kubelet.publish(kubelet.new_pod(), plain)  # fill the cache
    samples: dict[str, list[float]] = {"catalog": [], "plain": []}
    pods: list[PodVolume] = []
    for i in range(count):
        for label, attributes in (("catalog", CATALOG), ("plain", plain)):
            pod = kubelet.new_pod(name=f"{label}-{i}")
            samples[label].append(timed(partial(kubelet.publish, pod, attributes)))
            pods.append(pod)
    for pod in pods:
        kubelet.unpublish(pod)
    print(f"\npublish, {count} distinct targets each, interleaved (ms)")
    print(f"  {'':34}{'p50':>9}{'p99':>9}")
    names = {"catalog": "catalog volume {catalog: node}", "plain": "warm publish, cached module"}
    for label, name in names.items():
        p50, p99 = statistics.median(samples[label]), percentile(samples[label], 0.99)
        print(f"  {name:34}{p50 * 1e3:9.3f}{p99 * 1e3:9.3f}")
    ratio = statistics.median(samples["catalog"]) / statistics.median(samples["plain"])
    print(f"  ratio catalog / warm: {ratio:.2f}x")


def rollout_delay(
    kubelet: Kubelet, registry: Registry, listed: Path, refresh: float, rounds: int
) -> None:
    first = push_wasm_artifact(registry, REPO, "stable", make_module(64 * 1024, "roll-0"))
    listed.write_text(json.dumps([{"name": "filter", "url": f"oci://{first.reference}"}]))
    pod = kubelet.new_pod(name="rollout")
    kubelet.publish(pod, CATALOG)
    shown = pod.target / "filter.wasm"
    wait_until(lambda: inode(shown) is not None, 60)
    delays = []
    for round_ in range(1, rounds + 1):
        before = inode(shown)
        # Move the tag at a random phase of the refresh cycle, as a real push would.
        time.sleep(random.uniform(0, refresh))
        push_wasm_artifact(registry, REPO, "stable", make_module(64 * 1024, f"roll-{round_}"))
        moved = time.perf_counter()
        wait_until(lambda: inode(shown) != before, 10 * refresh + 60)  # noqa: B023
        delays.append(time.perf_counter() - moved)
    kubelet.unpublish(pod)
    print(f"\nrollout: tag moved -> new file in a pod's catalog mount, {rounds} moves (s)")
    print(f"  refresh interval (--prefetch-refresh): {refresh:.1f}")
    print(
        f"  delay min {min(delays):.2f}  median {statistics.median(delays):.2f}  "
        f"max {max(delays):.2f}  (expected: spread over 0..{refresh * 1.1:.1f} + one pull)"
    )
    print(f"  each: {' '.join(f'{d:.2f}' for d in delays)}")


def inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the catalog did not change in time")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=200, help="publishes of each kind")
    parser.add_argument("--refresh", type=float, default=5.0, help="--prefetch-refresh, s")
    parser.add_argument("--moves", type=int, default=8, help="tag moves to time")
    args = parser.parse_args()
    listed_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    listed = listed_dir / f"csi-wasm-bench-catalog-{os.getpid()}.json"
    listed.write_text("[]")
    flags = ["--prefetch-file", str(listed), "--prefetch-refresh", f"{args.refresh}s"]
    try:
        with (
            loopback_node("csi-wasm catalog benchmark", flags) as node,
            connect(node.dirs) as kubelet,
        ):
            publish_cost(kubelet, node.registry, args.publishes)
            rollout_delay(kubelet, node.registry, listed, args.refresh, args.moves)
    finally:
        listed.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
