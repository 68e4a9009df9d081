"""The cost of signature verification: publishes under an enforcing rule next to the same
publishes of modules no rule matches, same driver, same run.

    flock /tmp/csi-wasm-bench.lock env PYTHONPATH=tests \
        .venv/bin/python benchmarks/bench_signatures.py

1. Warm publish (module cached; under the rule its verdict is cached too): p50/p99 over N
   publishes to distinct targets. The ratio signed/plain should be ~1: no registry call.
2. Cold publish of a fresh 4 MiB module: signed with cosign 2's layout (tag .sig) and
   cosign 3's (bundle via the fallback tag, after a 404 from the referrers API), P-256,
   next to an unsigned module no rule matches. The difference is the verification:
   two to four extra registry round trips and one ECDSA verify.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from loopback import loopback_node
from support.cosign import (
    Signer,
    make_bundle,
    push_bundle_referrer,
    push_signature_tag,
    signed_layer,
    simplesigning_payload,
    statement,
)
from support.driver import connect
from support.kubelet import Kubelet
from support.oci import PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

MIB = 1024 * 1024
SIGNER = Signer.p256()


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def push(registry: Registry, repo: str, tag: str, size: int, layout: str | None) -> PushedModule:
    module = push_wasm_artifact(
        registry, repo, tag, make_module(size, f"{repo}-{tag}-{time.time_ns()}")
    )
    if layout == "simplesigning":
        payload = simplesigning_payload(module.manifest_digest, module.reference)
        push_signature_tag(registry, repo, module.manifest_digest, [signed_layer(SIGNER, payload)])
    elif layout == "bundle":
        bundle = make_bundle([SIGNER], statement(module.manifest_digest, module.reference))
        push_bundle_referrer(registry, repo, module.manifest_descriptor(), bundle)
    return module


def warm(kubelet: Kubelet, registry: Registry, count: int) -> None:
    modules = {
        "plain (no rule)": push(registry, "bench/plain", "warm", 64 * 1024, None),
        "signed, enforce": push(registry, "bench/signed/a", "warm", 64 * 1024, "simplesigning"),
    }
    attributes = {
        label: {"url": module.reference, "imagePullPolicy": "IfNotPresent"}
        for label, module in modules.items()
    }
    for wanted in attributes.values():
        kubelet.publish(kubelet.new_pod(), wanted)  # fill the cache (and the verdict)
    results: dict[str, list[float]] = {label: [] for label in modules}
    pods = []
    for i in range(count):  # interleaved, so that background load hits both alike
        for label, wanted in attributes.items():
            pod = kubelet.new_pod(name=f"warm-{i}")
            results[label].append(timed(partial(kubelet.publish, pod, wanted)))
            pods.append(pod)
    for pod in pods:
        kubelet.unpublish(pod)
    print(f"\nwarm publish, {count} distinct targets (ms)")
    print(f"  {'':28}{'p50':>9}{'p99':>9}")
    for label, samples in results.items():
        p99 = percentile(samples, 0.99)
        print(f"  {label:28}{statistics.median(samples) * 1e3:9.3f}{p99 * 1e3:9.3f}")
    plain, signed = (statistics.median(s) for s in results.values())
    print(f"  ratio signed/plain p50: {signed / plain:.2f}x   (goal: ~1, no registry call)")


def cold(kubelet: Kubelet, registry: Registry, size_mib: int, rounds: int) -> None:
    cases = {
        "plain (no rule)": ("bench/plain", None),
        "signed, .sig tag (cosign 2)": ("bench/signed/a", "simplesigning"),
        "signed, bundle (cosign 3)": ("bench/signed/b", "bundle"),
    }
    results: dict[str, list[float]] = {label: [] for label in cases}
    for round_ in range(rounds):
        for label, (repo, layout) in cases.items():  # interleaved: load hits all alike
            module = push(registry, repo, f"cold-{round_}", size_mib * MIB, layout)
            pod = kubelet.new_pod()
            results[label].append(timed(partial(kubelet.publish, pod, {"url": module.reference})))
            kubelet.unpublish(pod)
    print(f"\ncold publish, {size_mib} MiB module, median of {rounds} (ms)")
    plain = statistics.median(results["plain (no rule)"])
    for label, samples in results.items():
        median = statistics.median(samples)
        print(f"  {label:30}{median * 1e3:9.1f}   +{(median - plain) * 1e3:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200, help="warm publishes per case")
    parser.add_argument("--rounds", type=int, default=7, help="cold publishes per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="csi-wasm-bench-keys-") as scratch:
        key = SIGNER.write_public(Path(scratch) / "bench.pub")
        policy = Path(scratch) / "policy.yaml"
        policy.write_text('rules:\n- match: "*/bench/signed/**"\n  keys: [bench]\n')
        flags = ["--verify-key", f"bench={key}", "--verify-policy", str(policy)]
        with (
            loopback_node("csi-wasm signature benchmark", flags) as node,
            connect(node.dirs) as kubelet,
        ):
            warm(kubelet, node.registry, args.warm)
            cold(kubelet, node.registry, 4, args.rounds)


if __name__ == "__main__":
    main()
