"""Scale: a node with 1000 published volumes.

    ./dev bench            (or: PYTHONPATH=tests python3 benchmarks/bench_scale.py)

In one run, against one driver process:

1. publish (and unpublish) p50/p99 with one volume published: ``--samples`` cycles of
   publish, then unpublish, of a fresh pod, timing each call;
2. the same with ``--volumes`` (1000) other volumes published (goal: publish p50
   within 1.2x of 1.);
3. the driver's RSS with those volumes published (goal: under 100 MB);
4. restart to ready: SIGTERM, then from starting ``csi-wasm serve`` again to its first
   Probe answering ready, and to the first answered NodePublishVolume (kubelet's
   re-publish of a published volume) (goal: under 2 s).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from loopback import loopback_node
from support.driver import DriverProcess, NodeDirs, connect
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.wasm import make_module

from csi_wasm._proto import csi_pb2, csi_pb2_grpc
from csi_wasm.mounts import bind_read_only, unmount


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cycles(kubelet: Kubelet, attributes: dict[str, str], count: int) -> tuple[list[float], ...]:
    """Publish then unpublish ``count`` fresh pods, one at a time; the two latencies."""
    publish, unpublish = [], []
    for i in range(count):
        pod = kubelet.new_pod(name=f"cycle-{i}")
        publish.append(timed(lambda: kubelet.publish(pod, attributes)))  # noqa: B023
        unpublish.append(timed(lambda: kubelet.unpublish(pod)))  # noqa: B023
    return publish, unpublish


def bare_mounts(kubelet: Kubelet, source: Path, count: int) -> tuple[list[float], list[float]]:
    """The kernel's share: bare bind + read-only remount, and unmount, of fresh targets."""
    mount, umount = [], []
    for i in range(count):
        target = kubelet.new_pod(name=f"bare-{i}").target
        target.mkdir()
        mount.append(timed(lambda: bind_read_only(source, target)))  # noqa: B023
        umount.append(timed(lambda: unmount(target)))  # noqa: B023
        target.rmdir()
    return mount, umount


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def restart(
    driver: DriverProcess, dirs: NodeDirs, republish: csi_pb2.NodePublishVolumeRequest
) -> tuple[float, float]:
    """Seconds from starting the process to Probe ready, and to a re-publish answered."""
    driver.terminate()
    started = time.perf_counter()
    driver.start()  # returns when the socket exists
    channel = grpc.insecure_channel(dirs.endpoint)
    try:
        identity = csi_pb2_grpc.IdentityStub(channel)
        node = csi_pb2_grpc.NodeStub(channel)
        ready_at = None
        for _ in range(2000):  # bounded: 2000 probes, each waits for the channel at most 10 s
            answer = identity.Probe(csi_pb2.ProbeRequest(), timeout=10, wait_for_ready=True)
            if answer.ready.value:
                ready_at = time.perf_counter() - started
                break
        if ready_at is None:
            raise RuntimeError("the driver never became ready")
        node.NodePublishVolume(republish, timeout=60)
        published_at = time.perf_counter() - started
    finally:
        channel.close()
    return ready_at, published_at


def row(label: str, samples: list[float]) -> str:
    p50, p99 = statistics.median(samples) * 1e3, percentile(samples, 0.99) * 1e3
    return f"  {label:44}{p50:9.3f}{p99:9.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=1000, help="volumes kept published")
    parser.add_argument("--samples", type=int, default=200, help="timed publish cycles")
    args = parser.parse_args()
    with loopback_node("csi-wasm scale benchmark") as node:
        pushed = push_wasm_artifact(node.registry, "bench/scale", "v1", make_module(64 * 1024, "s"))
        attributes = {"url": pushed.reference}
        with connect(node.dirs) as kubelet:
            kubelet.publish(kubelet.new_pod(name="first"), attributes)  # fill the cache
            rss_one = rss_mb(node.driver.process.pid)  # type: ignore[union-attr]
            one_pub, one_unpub = cycles(kubelet, attributes, args.samples)
            module_dir = next((node.dirs.root / "modules").iterdir())
            one_bare, one_bare_umount = bare_mounts(kubelet, module_dir, args.samples)
            started = time.perf_counter()
            kept = [kubelet.new_pod(name=f"kept-{i}") for i in range(args.volumes)]
            for pod in kept:
                kubelet.publish(pod, attributes)
            fill = time.perf_counter() - started
            many_pub, many_unpub = cycles(kubelet, attributes, args.samples)
            many_bare, many_bare_umount = bare_mounts(kubelet, module_dir, args.samples)
            rss_many = rss_mb(node.driver.process.pid)  # type: ignore[union-attr]
            republish = kubelet.publish_request(kept[0], attributes)
        ready, published = restart(node.driver, node.dirs, republish)
        rss_restarted = rss_mb(node.driver.process.pid)  # type: ignore[union-attr]
        with connect(node.dirs) as kubelet:
            for pod in kept:
                kubelet.unpublish(pod)
    n = args.volumes
    print(f"\nscale: {n} published volumes, {args.samples} timed cycles each (ms)")
    print(f"  {'':44}{'p50':>9}{'p99':>9}")
    print(row("publish, 1 volume published", one_pub))
    print(row(f"publish, {n} volumes published", many_pub))
    print(row("unpublish, 1 volume published", one_unpub))
    print(row(f"unpublish, {n} volumes published", many_unpub))
    print(row("  bare bind + ro remount, 1 volume", one_bare))
    print(row(f"  bare bind + ro remount, {n} volumes", many_bare))
    print(row("  bare umount2 (csi_wasm.mounts.unmount), 1", one_bare_umount))
    print(row(f"  bare umount2 (csi_wasm.mounts.unmount), {n}", many_bare_umount))
    ratio = statistics.median(many_pub) / statistics.median(one_pub)
    print(f"  publish p50 ratio {n} / 1: {ratio:.2f}x   (goal: within 1.2x)")
    unratio = statistics.median(many_unpub) / statistics.median(one_unpub)
    print(f"  unpublish p50 ratio {n} / 1: {unratio:.2f}x")
    print(f"  publishing the {n} volumes took {fill:.1f} s")
    print(
        f"  driver RSS: {rss_one:.1f} MB with 1 volume, {rss_many:.1f} MB with {n}, "
        f"{rss_restarted:.1f} MB after the restart   (goal: under 100 MB)"
    )
    print(
        f"  restart with {n} volumes: ready (Probe) after {ready:.2f} s, first publish "
        f"answered after {published:.2f} s   (goal: under 2 s)"
    )


if __name__ == "__main__":
    main()
