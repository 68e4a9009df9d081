"""Long pulls log their progress: a real pull held mid-blob by a proxy in front of a registry."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from reliability.faultproxy import Fault, fault_proxy
from support.driver import wait_for
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.access import AccessRecords
from csi_wasm.attributes import parse_attributes
from csi_wasm.cache.store import ModuleStore
from csi_wasm.progress import ProgressLog
from csi_wasm.puller import Puller
from csi_wasm.registry import RegistryClient, RegistryOptions
from csi_wasm.settings import PullSettings


def test_a_stalled_pull_logs_its_bytes_rate_and_host_every_interval(
    tmp_path: Path, registry: Registry, unique_repo: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="csi_wasm.progress")
    module = make_module(64 * 1024, "progress")
    push_wasm_artifact(registry, unique_repo, "v1", module)
    store = ModuleStore(tmp_path / "root")
    store.prepare()
    access = AccessRecords(store.root / "access")
    access.prepare()
    progress = ProgressLog(interval=0.05)

    def lines() -> list[dict[str, object]]:
        return [
            r.fields  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "pull in progress"
        ]

    with fault_proxy(registry.url) as proxy:
        hosts = frozenset({proxy.host})
        proxy.inject(Fault("stall", target="blobs", stall_after=1000, times=1))
        with RegistryClient(RegistryOptions(insecure_registries=hosts)) as client:
            puller = Puller(
                store, client, PullSettings(insecure_registries=hosts), access, progress=progress
            )
            request = parse_attributes({"url": f"{proxy.host}/{unique_repo}:v1"})
            got = []
            thread = threading.Thread(target=lambda: got.append(puller.get(request, None, 60)))
            thread.start()
            wait_for(lambda: any(line["bytes"] == 1000 for line in lines()), what="a progress line")
            wait_for(lambda: len(lines()) >= 3, what="a line every interval")
            proxy.clear()  # the held response goes on
            thread.join(timeout=60)
    assert got and got[0].size == len(module)

    line = next(line for line in lines() if line["bytes"] == 1000)
    assert line["host"] == proxy.host
    assert line["source"] == f"{proxy.host}/{unique_repo}:v1"
    assert line["total_bytes"] == len(module)
    assert isinstance(line["mib_per_s"], float)
    wait_for(lambda: not progress.active(), what="the progress thread to end with the pull")
