"""Many publishes waiting on a pull that never finishes: does the driver still answer?

    ./dev bench waiting    (or: PYTHONPATH=tests python3 benchmarks/bench_waiting.py)

A fault proxy in front of the loopback registry trickles one module's blob (one byte
every 0.2 s, headers first), so its pull never finishes while the benchmark runs.
Measured first with the driver idle, then with ``--waiting`` publishes of that module
in flight, in the same run:

* Probe round trip p50 / p99 (goal with 500 waiting: p99 under 100 ms);
* publish of a module already in the cache, p50 (goal: within 2x of its idle p50);
* the driver's RSS and thread count.

A call that gets no answer within ``--call-timeout`` counts as timed out; after three
in a row the rest of that series is skipped (the old thread-per-call server never
answers while the pull lasts). Then the trickle ends, every waiting call must get its
answer (an error: the pull was broken off), and the counts are printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from loopback import loopback_node
from reliability.faultproxy import Fault
from support.driver import DriverProcess, connect
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.wasm import make_module

from csi_wasm._proto import csi_pb2

MIB = 1024 * 1024


@dataclass
class Series:
    seconds: list[float]
    timed_out: int

    def percentile(self, q: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def show(self, q: float) -> str:
        value = self.percentile(q)
        shown = "   n/a" if value is None else f"{value * 1e3:9.2f}"
        return shown + (f"  ({self.timed_out} timed out)" if self.timed_out else "")


def timed(call: Callable[[], object], count: int) -> Series:
    """``count`` sequential calls; three timeouts in a row end the series."""
    seconds: list[float] = []
    timed_out = in_a_row = 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            call()
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            timed_out += 1
            in_a_row += 1
            if in_a_row == 3:
                break
            continue
        in_a_row = 0
        seconds.append(time.perf_counter() - started)
    return Series(seconds, timed_out)


def driver_status(driver: DriverProcess) -> tuple[float, int]:
    """The driver's resident memory (MiB) and thread count, from /proc."""
    assert driver.process is not None
    fields = {}
    with open(f"/proc/{driver.process.pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["Threads"][0])


def measure(
    kubelet: Kubelet,
    driver: DriverProcess,
    cached: str,
    probes: int,
    publishes: int,
    timeout: float,
) -> tuple[Series, Series, tuple[float, int]]:
    probe = timed(lambda: kubelet.identity.Probe(csi_pb2.ProbeRequest(), timeout=timeout), probes)
    pods = [kubelet.new_pod(name=f"cached-{i}") for i in range(publishes)]
    done = iter(pods)

    def publish() -> None:
        kubelet.publish(next(done), {"url": cached}, timeout=timeout)

    publish_series = timed(publish, publishes)
    status = driver_status(driver)
    for pod in pods[: len(publish_series.seconds)]:
        kubelet.unpublish(pod, timeout=120)
    return probe, publish_series, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=500, help="publishes waiting on the pull")
    parser.add_argument("--probes", type=int, default=300, help="Probe calls per series")
    parser.add_argument("--publishes", type=int, default=50, help="cached publishes per series")
    parser.add_argument("--call-timeout", type=float, default=5.0, help="seconds per call")
    args = parser.parse_args()
    with loopback_node("csi-wasm waiting benchmark", with_proxy=True) as node:
        assert node.proxy is not None
        cached = push_wasm_artifact(node.registry, "bench/cached", "v1", make_module(MIB, "c"))
        stuck = push_wasm_artifact(
            node.registry, "bench/stuck", "v1", make_module(4 * MIB, f"s{time.time_ns()}")
        )
        stuck_url = stuck.reference.replace(node.registry.host, node.proxy.host)
        with connect(node.dirs) as kubelet, connect(node.dirs) as waiters:
            kubelet.publish(kubelet.new_pod(name="warm-up"), {"url": cached.reference})
            idle = measure(kubelet, node.driver, cached.reference, args.probes, args.publishes, 30)

            node.proxy.inject(Fault("drip", drip_interval=0.2, max_drip_seconds=3600))
            calls: list[grpc.Future[Any]] = []
            for i in range(args.waiting):
                request = waiters.publish_request(waiters.new_pod(name=f"w{i}"), {"url": stuck_url})
                calls.append(waiters.node.NodePublishVolume.future(request, timeout=3600))
            node.proxy.wait_for(lambda: node.proxy is not None and node.proxy.broken >= 1)
            time.sleep(2.0)  # let every call reach the driver; the blob is dripping meanwhile
            loaded = measure(
                kubelet,
                node.driver,
                cached.reference,
                args.probes,
                args.publishes,
                args.call_timeout,
            )
            pending = sum(not call.done() for call in calls)
            node.proxy.clear()
            codes: dict[str, int] = {}
            for call in calls:
                error = call.exception(timeout=600)
                assert error is None or isinstance(error, grpc.Call)
                code = "OK" if error is None else error.code().name
                codes[code] = codes.get(code, 0) + 1
        report(args.waiting, idle, loaded, pending, codes, node.proxy.count("blobs"))


def report(
    waiting: int,
    idle: tuple[Series, Series, tuple[float, int]],
    loaded: tuple[Series, Series, tuple[float, int]],
    pending: int,
    codes: dict[str, int],
    blob_requests: int,
) -> None:
    (idle_probe, idle_publish, (idle_rss, idle_threads)) = idle
    (probe, publish, (rss, threads)) = loaded
    print(
        f"\n{waiting} publishes waiting on one trickling pull ({pending} still waiting at the end)"
    )
    print(f"  {'(ms)':34}{'idle':>9}   {'with ' + str(waiting) + ' waiting':>20}")
    print(f"  {'Probe p50':34}{idle_probe.show(0.5)}   {probe.show(0.5)}")
    print(f"  {'Probe p99':34}{idle_probe.show(0.99)}   {probe.show(0.99)}   (goal: < 100)")
    print(f"  {'cached-module publish p50':34}{idle_publish.show(0.5)}   {publish.show(0.5)}")
    idle_p50, loaded_p50 = idle_publish.percentile(0.5), publish.percentile(0.5)
    if idle_p50 and loaded_p50:
        print(f"  cached publish ratio loaded / idle: {loaded_p50 / idle_p50:.2f}x   (goal: < 2x)")
    print(f"  {'driver RSS (MiB)':34}{idle_rss:9.1f}   {rss:9.1f}")
    print(f"  {'driver threads':34}{idle_threads:9d}   {threads:9d}")
    print(f"  answers once the trickle ended: {codes}; blob requests: {blob_requests}")


if __name__ == "__main__":
    main()
