"""Thundering herd: many pods publish one uncached module at the same moment.

    ./dev bench            (or: PYTHONPATH=tests python3 benchmarks/bench_herd.py)

Each round pushes two fresh modules of the same size. One is published by a single pod
(a cold publish), then by ``--warm`` pods one after another (warm publishes: it is
cached now); the other by ``--pods`` pods whose NodePublishVolume calls are all put in
flight at once. Reported, in the same run: the blob GETs the registry saw for the herd
(goal: 1), the herd's wall time (first call sent to last answer) next to the single cold
publish, and next to its floor: one cold publish plus ``--pods`` warm publishes, i.e.
one pull and then each RPC's own work (goal: within 1.2x).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import grpc
from loopback import loopback_node
from support.driver import connect
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

MIB = 1024 * 1024


def herd(kubelet: Kubelet, reference: str, pods: int) -> tuple[float, float]:
    """Wall times of ``pods`` concurrent publishes of ``reference`` to the first and the
    last answer; all must succeed."""
    volumes = [kubelet.new_pod(name=f"herd-{i}") for i in range(pods)]
    requests = [kubelet.publish_request(pod, {"url": reference}) for pod in volumes]
    answered: list[float] = []
    started = time.perf_counter()
    calls: list[grpc.Future[Any]] = []
    for request in requests:
        call: grpc.Future[Any] = kubelet.node.NodePublishVolume.future(request, timeout=300)
        call.add_done_callback(lambda _: answered.append(time.perf_counter()))
        calls.append(call)
    for call in calls:
        call.result(timeout=300)
    last = time.perf_counter() - started
    first = min(answered) - started
    for pod in volumes:
        kubelet.unpublish(pod)
    return first, last


def single(kubelet: Kubelet, reference: str, name: str = "single") -> float:
    pod = kubelet.new_pod(name=name)
    started = time.perf_counter()
    kubelet.publish(pod, {"url": reference}, timeout=300)
    elapsed = time.perf_counter() - started
    kubelet.unpublish(pod)
    return elapsed


def warm(kubelet: Kubelet, reference: str, count: int) -> float:
    """Median of ``count`` publishes, one after another, of a cached module."""
    return statistics.median(single(kubelet, reference, "warm") for _ in range(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[50, 100], help="herd sizes")
    parser.add_argument("--size-mib", type=int, nargs="+", default=[4], help="module sizes")
    parser.add_argument("--warm", type=int, default=20, help="warm publishes per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are reported)")
    args = parser.parse_args()
    with loopback_node("csi-wasm herd benchmark") as node, connect(node.dirs) as kubelet:
        for size_mib in args.size_mib:
            for pods in args.pods:
                run(kubelet, node.registry, size_mib, pods, args.rounds, args.warm)


def run(
    kubelet: Kubelet, registry: Registry, size_mib: int, pods: int, rounds: int, warm_count: int
) -> None:
    singles, warms, firsts, herds, gets = [], [], [], [], []
    for round_ in range(rounds):
        size = size_mib * MIB
        stamp = time.time_ns()
        alone = push_wasm_artifact(
            registry, f"bench/single{size_mib}-{pods}", f"r{round_}", make_module(size, f"s{stamp}")
        )
        crowd = push_wasm_artifact(
            registry, f"bench/herd{size_mib}-{pods}", f"r{round_}", make_module(size, f"h{stamp}")
        )
        singles.append(single(kubelet, alone.reference))
        warms.append(warm(kubelet, alone.reference, warm_count))
        mark = registry.mark()
        first, last = herd(kubelet, crowd.reference, pods)
        firsts.append(first)
        herds.append(last)
        gets.append(registry.blob_gets(crowd.layer_digest, since=mark))
    one, many = statistics.median(singles), statistics.median(herds)
    each = statistics.median(warms)
    floor = one + pods * each
    print(f"\nthundering herd: {pods} pods, one uncached {size_mib} MiB module")
    print(f"  median of {rounds} rounds (ms)")
    print(f"  {'single cold publish':36}{one * 1e3:9.1f}")
    print(f"  {'warm publish (median of ' + str(warm_count) + ')':36}{each * 1e3:9.1f}")
    print(f"  {f'floor: cold + {pods} x warm':36}{floor * 1e3:9.1f}")
    print(
        f"  {f'{pods} concurrent publishes: first answer':36}{statistics.median(firsts) * 1e3:9.1f}"
    )
    print(f"  {'  last answer (wall)':36}{many * 1e3:9.1f}")
    print(f"  ratio wall / single: {many / one:.2f}x")
    print(f"  ratio wall / floor: {many / floor:.2f}x   (goal: within 1.2x)")
    print(f"  blob GETs seen by the registry per herd: {gets}   (goal: 1 each)")


if __name__ == "__main__":
    main()
