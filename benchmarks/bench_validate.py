"""What validating a module costs, next to the cold publish that pays for it, same run.

    ./dev bench validate   (or: PYTHONPATH=tests .venv/bin/python benchmarks/bench_validate.py)

For 4 MiB and 64 MiB modules of two kinds, a module padded by a custom section (what
bench_publish pulls; the validator skips the section's bytes) and one that is nearly
all code (what a compiled filter is: every function body is validated):

1. csi-wasm's validation alone (`read_facts` of the file: wasmtime's validator in place
   plus the import/export reader), median of N, the file in the page cache; next to
   wabt's `wasm-validate` of the same file (an independent validator, a process).
2. The cold publish of the same module through the driver (which validates it before
   committing it), next to curl + hashlib sha256 of the same blob.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_publish import MIB, curl_and_hash, timed
from loopback import loopback_node
from support.driver import connect
from support.kubelet import Kubelet
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import join_sections, make_code_module, make_module, split_sections

from csi_wasm.verify import read_facts, validator

KINDS: dict[str, Callable[[int, str], bytes]] = {
    "custom-section padded": make_module,
    "code": make_code_module,
}


def validation(path: Path, rounds: int) -> tuple[float, float]:
    """Medians (s) of our validation and of wabt's wasm-validate on ``path``."""
    read_facts(path)  # first use: imports wasmtime, makes the engine
    ours = [timed(lambda: read_facts(path)) for _ in range(rounds)]
    wabt = [
        timed(lambda: subprocess.run(["wasm-validate", str(path)], check=True))
        for _ in range(rounds)
    ]
    return statistics.median(ours), statistics.median(wabt)


def cold(
    kubelet: Kubelet, registry: Registry, module: bytes, label: str, rounds: int, scratch: Path
) -> tuple[float, float]:
    """Medians (s) of a cold publish and of curl + sha256 of the same blob."""
    publish, reference = [], []
    for round_ in range(rounds):
        # A new digest each round (one more custom section): every publish is cold.
        nonce = time.time_ns().to_bytes(8, "little")
        fresh = join_sections([*split_sections(module), (0, b"\x0ecsi-wasm.round" + nonce)])
        pushed = push_wasm_artifact(registry, f"bench/validate-{label}", f"r{round_}", fresh)
        blob_url = f"{registry.url}/v2/bench/validate-{label}/blobs/{pushed.layer_digest}"
        reference.append(
            timed(lambda: curl_and_hash(blob_url, scratch / "blob", pushed.layer_digest))  # noqa: B023
        )
        pod = kubelet.new_pod()
        publish.append(timed(lambda: kubelet.publish(pod, {"url": pushed.reference})))  # noqa: B023
        kubelet.unpublish(pod)
    return statistics.median(publish), statistics.median(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measurements per figure")
    args = parser.parse_args()
    with (
        loopback_node(f"csi-wasm validation cost ({validator()})") as node,
        connect(node.dirs) as kubelet,
        tempfile.TemporaryDirectory() as work,
    ):
        scratch = Path(work)
        print(f"\nmedians of {args.rounds} (ms)")
        print(
            f"  {'module':30}{'validate':>10}{'wabt':>10}{'cold publish':>14}"
            f"{'curl+sha256':>13}{'validate/publish':>18}"
        )
        for size_mib in (4, 64):
            for kind, build in KINDS.items():
                module = build(size_mib * MIB, f"validate-{size_mib}-{time.time_ns()}")
                path = scratch / "module.wasm"
                path.write_bytes(module)
                ours, wabt = validation(path, args.rounds)
                label = f"{size_mib}-{kind.split()[0]}"
                published, fetched = cold(
                    kubelet, node.registry, module, label, args.rounds, scratch
                )
                name = f"{len(module) / MIB:.1f} MiB {kind}"
                print(
                    f"  {name:30}{ours * 1e3:10.1f}{wabt * 1e3:10.1f}{published * 1e3:14.1f}"
                    f"{fetched * 1e3:13.1f}{ours / published:17.0%}"
                )


if __name__ == "__main__":
    main()
