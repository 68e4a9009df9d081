"""Publish latency, measured next to references in the same run.

    ./dev bench            (or: PYTHONPATH=tests .venv/bin/python benchmarks/bench_publish.py)

1. Warm publish (module already cached): p50/p99 over N publishes to distinct targets,
   next to the floor: the driver's own Probe round trip plus a bare bind mount and
   read-only remount of the same paths.
2. Cold publish of 4 MiB and 64 MiB modules next to `curl` of the same blob from the
   same registry plus an in-process hashlib sha256 of the file it wrote, and next to
   `skopeo copy` of the same reference into a local directory (skopeo checks digests).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from loopback import loopback_node
from support.driver import NodeDirs, connect
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm._proto import csi_pb2
from csi_wasm.mounts import bind_read_only, unmount

MIB = 1024 * 1024


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def warm(kubelet: Kubelet, registry: Registry, dirs: NodeDirs, count: int) -> None:
    pushed = push_wasm_artifact(registry, "bench/warm", "v1", make_module(64 * 1024, "warm"))
    attributes = {"url": pushed.reference}
    kubelet.publish(kubelet.new_pod(), attributes)  # fill the cache
    pods = [kubelet.new_pod(name=f"warm-{i}") for i in range(count)]
    publish = [timed(partial(kubelet.publish, pod, attributes)) for pod in pods]
    probe = [timed(lambda: kubelet.identity.Probe(csi_pb2.ProbeRequest())) for _ in range(count)]
    module_dir = next((dirs.root / "modules").iterdir())
    floor_pods = [kubelet.new_pod(name=f"floor-{i}") for i in range(count)]
    mount = []
    for pod in floor_pods:
        pod.target.mkdir()
        mount.append(timed(partial(bind_read_only, module_dir, pod.target)))
    for pod in floor_pods:
        unmount(pod.target)
    for pod in pods:
        kubelet.unpublish(pod)
    floor = [p + m for p, m in zip(probe, mount, strict=True)]
    p50, floor50 = statistics.median(publish), statistics.median(floor)
    print(f"\nwarm publish, {count} distinct targets (ms)")
    print(f"  {'':28}{'p50':>9}{'p99':>9}")
    for label, samples in (
        ("csi-wasm NodePublishVolume", publish),
        ("floor: Probe + bind + ro", floor),
    ):
        p99 = percentile(samples, 0.99)
        print(f"  {label:28}{statistics.median(samples) * 1e3:9.3f}{p99 * 1e3:9.3f}")
    print(
        f"    of which Probe round trip {statistics.median(probe) * 1e3:.3f}, "
        f"bind+remount {statistics.median(mount) * 1e3:.3f}"
    )
    print(f"  ratio p50 / floor p50: {p50 / floor50:.2f}x   (goal: p50 < 5 ms, within 3x of floor)")


def curl_and_hash(url: str, out: Path, want: str, *, durable: bool = False) -> None:
    """The reference a user would otherwise script: curl the blob, then hash the file.

    ``durable`` adds an fsync of the file, as the driver does before a module is used.
    """
    subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
    digest = hashlib.sha256()
    with out.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
        if durable:
            os.fsync(handle.fileno())
    assert "sha256:" + digest.hexdigest() == want


def skopeo_copy(reference: str, out: Path) -> None:
    """What a user could run instead: copy the artifact to a directory, digests checked."""
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{reference}",
            f"dir:{out}",
        ],
        check=True,
        capture_output=True,
    )


def cold(kubelet: Kubelet, registry: Registry, size_mib: int, rounds: int) -> None:
    publish, reference, durable, skopeo = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(rounds):
            module = make_module(size_mib * MIB, f"cold-{size_mib}-{round_}-{time.time_ns()}")
            pushed = push_wasm_artifact(registry, f"bench/cold{size_mib}", f"r{round_}", module)
            blob_url = f"{registry.url}/v2/bench/cold{size_mib}/blobs/{pushed.layer_digest}"
            out = Path(scratch) / "blob"

            reference.append(timed(lambda: curl_and_hash(blob_url, out, pushed.layer_digest)))  # noqa: B023
            synced = Path(scratch) / f"synced-{round_}"
            durable.append(
                timed(lambda: curl_and_hash(blob_url, synced, pushed.layer_digest, durable=True))  # noqa: B023
            )
            copy = Path(scratch) / f"skopeo-{round_}"
            skopeo.append(timed(lambda: skopeo_copy(pushed.reference, copy)))  # noqa: B023
            pod = kubelet.new_pod()
            url = pushed.reference
            publish.append(timed(lambda: kubelet.publish(pod, {"url": url})))  # noqa: B023
            kubelet.unpublish(pod)
    ours, theirs = statistics.median(publish), statistics.median(reference)
    copied = statistics.median(skopeo)
    print(f"\ncold publish, {size_mib} MiB module, median of {rounds} (ms)")
    print(f"  {'csi-wasm NodePublishVolume':28}{ours * 1e3:9.1f}")
    print(f"  {'curl + hashlib sha256':28}{theirs * 1e3:9.1f}")
    print(f"  {'skopeo copy docker:// dir:':28}{copied * 1e3:9.1f}")
    print(f"  {'curl + sha256 + fsync':28}{statistics.median(durable) * 1e3:9.1f}   (for scale)")
    print(f"  ratio to curl + sha256: {ours / theirs:.2f}x   (goal: within 1.3x)")
    print(f"  ratio to skopeo copy:   {ours / copied:.2f}x   (goal: below 1, ahead of skopeo)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200, help="warm publishes")
    parser.add_argument("--rounds", type=int, default=5, help="cold publishes per size")
    args = parser.parse_args()
    with loopback_node("csi-wasm benchmarks") as node, connect(node.dirs) as kubelet:
        warm(kubelet, node.registry, node.dirs, args.warm)
        for size in (4, 64):
            cold(kubelet, node.registry, size, args.rounds)


if __name__ == "__main__":
    main()
