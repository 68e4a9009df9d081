"""Fleet rehearsal: N nodes behind a real pull-through cache roll out one module.

    ./dev bench fleet [--nodes 20 50 100]   (or: PYTHONPATH=tests python3 benchmarks/bench_fleet.py)

Origin: Debian's docker-registry. Mirror: a second docker-registry configured as a
pull-through cache of the origin (distribution's ``proxy.remoteurl``, the engine of
Harbor's proxy cache). Nodes: N independent ``csi-wasm serve`` processes (own root,
socket and kubelet dir), each with ``--registry-mirror ORIGIN=MIRROR``. Everything
listens on 127.0.0.1.

For each N: one node's cold publish (a fresh module through the cold mirror), then a
rollout (every node publishes one new module to ``--pods`` pods at once): blob GETs the
origin served, publish p50/p99 over every pod, the rollout's wall time, both registries'
bytes out (from their access logs) and the nodes' memory. On the first N only:

* the mirror stops mid-rollout: nodes fall back to the origin, every pod must start;
* the origin stops once the mirror has the module: nothing may fail;
* a module updated under the same tag, published with ``imagePullPolicy: Always``:
  every node must see the new digest through the mirror;
* a dead mirror's cost per publish (a closed port; a server that accepts and never
  answers), with this checkout and with ``--baseline`` (the code before the mirror
  backoff), next to a node without a mirror.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from support.deadhosts import closed_port, silent_server
from support.driver import DriverProcess, NodeDirs, wait_for
from support.kubelet import Kubelet
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.mirrors import BACKOFF_INITIAL

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
# The last commit before a dead mirror was remembered (issue 15 part 3).
BASELINE = "34897b5^"


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- nodes ------------------------------------------------------------------------------


@dataclass
class Node:
    driver: DriverProcess
    kubelet: Kubelet | None = None

    @property
    def pid(self) -> int:
        assert self.driver.process is not None
        return self.driver.process.pid


@contextmanager
def fleet(
    base: Path, count: int, flags: Sequence[str], code: Path | None = None
) -> Iterator[list[Node]]:
    """``count`` serve processes started at once; each gets its own dirs and channel."""
    nodes: list[Node] = []
    channels: list[grpc.Channel] = []
    try:
        for index in range(count):
            dirs = NodeDirs(base / f"node-{index}")
            nodes.append(Node(DriverProcess(dirs, list(flags), code=code).launch()))
        for node in nodes:
            wait_for(node.driver.dirs.socket.exists, 600, what="a node's socket")
            channel = grpc.insecure_channel(node.driver.dirs.endpoint)
            grpc.channel_ready_future(channel).result(timeout=120)
            channels.append(channel)
            node.kubelet = Kubelet(node.driver.dirs.kubelet_dir, channel)
        yield nodes
    finally:
        for channel in channels:
            channel.close()
        for node in nodes:
            if node.driver.process is not None:
                node.driver.process.terminate()
        for node in nodes:
            if node.driver.process is not None:
                try:
                    node.driver.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.driver.kill()
            node.driver.dirs.cleanup_mounts()


def memory_mib(pids: Sequence[int]) -> tuple[float, float]:
    """Mean RSS and mean PSS (shared pages split between processes) in MiB."""
    rss, pss = [], []
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "Rss":
                rss.append(int(value.split()[0]) / 1024)
            elif name == "Pss":
                pss.append(int(value.split()[0]) / 1024)
    return statistics.mean(rss), statistics.mean(pss)


# --- publishing -------------------------------------------------------------------------


@dataclass
class Rollout:
    latencies: list[float] = field(default_factory=list)  # seconds, every answered call
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0
    targets: list[Path] = field(default_factory=list)

    def line(self) -> str:
        ms = [s * 1e3 for s in self.latencies]
        return (
            f"{len(self.latencies)} publishes, {len(self.failures)} failed; "
            f"p50 {percentile(ms, 0.5):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
            f"wall {self.wall:.2f} s"
        )


def rollout(
    nodes: Sequence[Node],
    attributes: dict[str, str],
    pods: int,
    *,
    on_first_answer: Callable[[], object] | None = None,
) -> Rollout:
    """Every node publishes ``attributes`` to ``pods`` pods, all calls in flight at once."""
    result = Rollout()
    lock = threading.Lock()
    calls: list[grpc.Future[Any]] = []
    first = threading.Event()
    started = time.perf_counter()
    for node in nodes:
        kubelet = node.kubelet
        assert kubelet is not None
        for index in range(pods):
            pod = kubelet.new_pod(name=f"pod-{index}")
            result.targets.append(pod.target)
            sent = time.perf_counter()
            request = kubelet.publish_request(pod, attributes)
            call: grpc.Future[Any] = kubelet.node.NodePublishVolume.future(request, timeout=300)

            def done(future: grpc.Future[Any], sent: float = sent) -> None:
                with lock:
                    if future.exception() is None:
                        result.latencies.append(time.perf_counter() - sent)
                    else:
                        result.failures.append(str(future.exception()).splitlines()[0][:200])
                first.set()

            call.add_done_callback(done)
            calls.append(call)
    if on_first_answer is not None:
        first.wait(300)
        on_first_answer()
    for call in calls:
        call.exception(timeout=300)  # failures are counted by the callback
    result.wall = time.perf_counter() - started
    return result


def mounted_digests(targets: Sequence[Path]) -> set[str]:
    """The sha256 of what each pod sees (a node's pods share one file: hash it once)."""
    digests: dict[tuple[int, int], str] = {}
    seen = set()
    for target in targets:
        module = target / "plugin.wasm"
        if not module.exists():
            seen.add("missing")
            continue
        info = module.stat()
        key = (info.st_dev, info.st_ino)
        if key not in digests:
            digests[key] = hashlib.sha256(module.read_bytes()).hexdigest()
        seen.add(digests[key])
    return seen


def fell_back(nodes: Sequence[Node], marks: Sequence[int]) -> int:
    """How many nodes logged their mirror going down since ``marks`` (log sizes)."""
    return sum(
        b"mirror is down" in read_from(node.driver.log_path, mark)
        for node, mark in zip(nodes, marks, strict=True)
    )


def log_marks(nodes: Sequence[Node]) -> list[int]:
    return [node.driver.log_path.stat().st_size for node in nodes]


def read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read()


def bytes_out(registry: Registry, since: int) -> int:
    return sum(r.size for r in registry.records(since=since) if r.method == "GET")


# --- the rehearsal ----------------------------------------------------------------------


@dataclass
class World:
    base: Path
    origin: Registry
    mirror: Registry
    size: int
    pods: int
    modules: int = 0

    def flags(self) -> list[str]:
        return [
            "--insecure-registry", self.origin.host,
            "--insecure-registry", self.mirror.host,
            "--registry-mirror", f"{self.origin.host}={self.mirror.host}",
        ]  # fmt: skip

    def push(self, repo: str = "fleet/filter", tag: str | None = None) -> PushedModule:
        self.modules += 1
        tag = tag or f"m{self.modules}"
        module = make_module(self.size, f"fleet-{time.time_ns()}-{self.modules}")
        return push_wasm_artifact(self.origin, repo, tag, module)


def run_size(world: World, count: int, with_faults: bool) -> None:
    print(f"\n== {count} nodes, {world.pods} pods each, one {world.size // MIB} MiB module ==")
    started = time.perf_counter()
    with fleet(world.base / f"fleet-{count}", count, world.flags()) as nodes:
        print(f"  {count} nodes started in {time.perf_counter() - started:.1f} s")
        idle_rss, idle_pss = memory_mib([n.pid for n in nodes])
        cold = world.push()
        solo = rollout(nodes[:1], {"url": cold.reference}, 1)
        assert not solo.failures, solo.failures
        one_node = solo.latencies[0]
        print(f"  one node's cold publish (cold mirror): {one_node * 1e3:.0f} ms")

        module = world.push()
        marks = world.origin.mark(), world.mirror.mark()
        logs = log_marks(nodes)
        result = rollout(nodes, {"url": module.reference}, world.pods)
        origin_gets = world.origin.blob_gets(module.layer_digest, since=marks[0])
        origin_out, mirror_out = (
            bytes_out(world.origin, marks[0]),
            bytes_out(world.mirror, marks[1]),
        )
        digests = mounted_digests(result.targets)
        rss, pss = memory_mib([n.pid for n in nodes])
        print(f"  rollout: {result.line()}")
        print(f"    wall / one node's cold publish: {result.wall / one_node:.1f}x")
        print(f"    every pod sees the module: {digests == {module.module_sha256}}")
        print(f"    blob GETs the origin served: {origin_gets}   (goal: 1 per module)")
        print(f"    nodes that found the mirror failing: {fell_back(nodes, logs)}")
        print(
            f"    bytes out: origin {origin_out / MIB:.1f} MiB, mirror {mirror_out / MIB:.1f} MiB"
            f" (module {world.size / MIB:.0f} MiB x {count} nodes = {world.size * count / MIB:.0f})"
        )
        print(
            f"  memory per node (MiB): idle RSS {idle_rss:.1f} PSS {idle_pss:.1f}; "
            f"after the rollout RSS {rss:.1f} PSS {pss:.1f}; all nodes PSS {pss * count:.0f}"
        )
        canary(world, nodes)
        if with_faults:
            faults(world, nodes)


def canary(world: World, nodes: list[Node]) -> None:
    """One node first; the rest once the mirror has stored the module."""
    module = world.push()
    mark = world.origin.mark()
    first = rollout(nodes[:1], {"url": module.reference}, world.pods)
    # Distribution 2.8 stores a missed blob with a second GET of its own: wait for it.
    wait_for(lambda: world.origin.blob_gets(module.layer_digest, since=mark) >= 2, 60)
    rest = rollout(nodes[1:], {"url": module.reference}, world.pods)
    gets = world.origin.blob_gets(module.layer_digest, since=mark)
    ok = mounted_digests(first.targets + rest.targets) == {module.module_sha256}
    print(f"  canary first, then the other nodes: {rest.line()}; every pod started: {ok}")
    print(f"    blob GETs the origin served: {gets}")


def faults(world: World, nodes: list[Node]) -> None:
    # 1. The mirror stops as soon as the first pod has started.
    module = world.push()
    mark, logs = world.origin.mark(), log_marks(nodes)
    result = rollout(
        nodes, {"url": module.reference}, world.pods, on_first_answer=world.mirror.stop
    )
    gets = world.origin.blob_gets(module.layer_digest, since=mark)
    ok = mounted_digests(result.targets) == {module.module_sha256}
    print(f"  mirror stopped mid-rollout: {result.line()}; every pod started: {ok}")
    print(
        f"    blob GETs the origin served: {gets}; nodes that fell back: {fell_back(nodes, logs)}"
    )
    world.mirror.start()  # same port and storage
    # Every node marked the mirror down at its first failure: it is tried again when
    # the backoff ends (5 s after that failure, or 10 s after a failed retry).
    time.sleep(2 * BACKOFF_INITIAL + 1)

    # 2. The origin stops once the mirror has the module.
    module = world.push()
    mark = world.origin.mark()
    warm = rollout(nodes[:1], {"url": module.reference}, 1)
    assert not warm.failures, warm.failures
    wait_for(lambda: world.origin.blob_gets(module.layer_digest, since=mark) >= 2, 60)
    world.origin.stop()
    try:
        result = rollout(nodes[1:], {"url": module.reference}, world.pods)
    finally:
        world.origin.start()
    ok = mounted_digests(result.targets) == {module.module_sha256}
    print(f"  origin stopped, mirror warm: {result.line()}; every pod started: {ok}")

    # 3. A module updated under the same tag, published with imagePullPolicy: Always.
    first = world.push("fleet/moving", "stable")
    rollout(nodes, {"url": first.reference}, 1)
    moved = world.push("fleet/moving", "stable")
    mark, logs = world.origin.mark(), log_marks(nodes)
    pushed_at = time.perf_counter()
    result = rollout(nodes, {"url": moved.reference, "imagePullPolicy": "Always"}, 1)
    seen = mounted_digests(result.targets)
    gets = world.origin.blob_gets(moved.layer_digest, since=mark)
    print(
        f"  tag moved on the origin, Always: {result.line()}; every node has the new digest "
        f"{time.perf_counter() - pushed_at:.2f} s after the push: {seen == {moved.module_sha256}}"
        f"; origin blob GETs {gets}; nodes that found the mirror failing {fell_back(nodes, logs)}"
    )


def dead_mirror_cost(world: World, baseline: Path, revision: str, publishes: int) -> None:
    """Seconds per publish of a fresh module with a dead mirror, old and new code."""
    print(f"\n== a dead mirror's cost per publish ({publishes} fresh modules, one node) ==")
    print(f"  baseline: csi_wasm at {revision} (before the mirror backoff)")
    print(f"  {'':34}{'first':>9}{'later (mean)':>14}")
    plain = ["--insecure-registry", world.origin.host]
    with silent_server() as silent:
        cases: list[tuple[str, Path | None, str | None]] = [
            ("no mirror (reference)", None, None),
            ("closed port, this checkout", None, closed_port()),
            ("closed port, baseline", baseline, closed_port()),
            ("never answers, this checkout", None, silent.host),
            ("never answers, baseline", baseline, silent.host),
        ]
        for index, (name, code, mirror) in enumerate(cases):
            flags = plain if mirror is None else [
                *plain, "--insecure-registry", mirror,
                "--registry-mirror", f"{world.origin.host}={mirror}",
            ]  # fmt: skip
            # The old code retries a silent mirror for minutes per pull: time one pull.
            count = 1 if code is not None and mirror == silent.host else publishes
            with fleet(world.base / f"dead-{index}", 1, flags, code) as nodes:
                times = []
                for _ in range(count):
                    module = world.push("fleet/dead")
                    result = rollout(nodes, {"url": module.reference}, 1)
                    times.extend(result.latencies or [float("nan")])
            later = f"{statistics.mean(times[1:]):14.2f}" if len(times) > 1 else f"{'-':>14}"
            print(f"  {name:34}{times[0]:9.2f}{later}  s")


def export_baseline(revision: str, into: Path) -> Path:
    """``csi_wasm`` as it was at ``revision``, to run beside this checkout."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "csi_wasm"],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[20, 50, 100])
    parser.add_argument("--pods", type=int, default=3, help="pods per node in a rollout")
    parser.add_argument("--size-mib", type=int, default=4)
    parser.add_argument("--dead-publishes", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old code")
    parser.add_argument("--skip-dead", action="store_true", help="skip the dead-mirror cost")
    args = parser.parse_args()
    machine = " ".join(platform.uname()[i] for i in (0, 2, 4))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    print(
        f"csi-wasm fleet rehearsal: {machine}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="csi-wasm-fleet-") as work, ExitStack() as stack:
        base = Path(work)
        origin = Registry(base / "origin").start()
        stack.callback(origin.stop)
        mirror = Registry(base / "mirror", proxy_of=origin.url).start()
        stack.callback(mirror.stop)
        print(f"origin {origin.host}, pull-through mirror {mirror.host}")
        world = World(base, origin, mirror, args.size_mib * MIB, args.pods)
        for index, count in enumerate(args.nodes):
            run_size(world, count, with_faults=index == 0)
        if not args.skip_dead:
            baseline = export_baseline(args.baseline, base / "baseline")
            dead_mirror_cost(world, baseline, args.baseline, args.dead_publishes)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
