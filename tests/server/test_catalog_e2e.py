"""The node catalog end to end: real registry, real driver, a --prefetch-file it follows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import grpc
import pytest
from support.apiserver import FakeConfigMapApiServer
from support.cosign import Signer, push_signature_tag, signed_layer, simplesigning_payload
from support.driver import DriverProcess, NodeDirs, connect, in_process, wait_for
from support.kubeconfig import write_kubeconfig
from support.kubelet import rpc_error
from support.oci import push_wasm_artifact
from support.registry import Registry, running_registry
from support.wasm import make_module

from csi_wasm.cache.fsck import check_store
from csi_wasm.cache.store import ModuleStore
from csi_wasm.catalog.directory import catalog_dir
from csi_wasm.catalog.status import read_status, status_path
from csi_wasm.settings import CacheSettings, ServeSettings, VerifySettings

REFRESH = 0.5  # seconds: --prefetch-refresh, and the file's poll interval


def hash_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def write_list(path: Path, entries: list[dict[str, str]]) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(entries))
    temp.rename(path)


def catalog_settings(node_dirs: NodeDirs, registry: Registry, listed: Path) -> ServeSettings:
    return dataclasses.replace(
        node_dirs.settings(insecure_registries=frozenset({registry.host})),
        prefetch_file=listed,
        prefetch_refresh=REFRESH,
        cache=CacheSettings(max_bytes=1),  # anything the catalog did not hold would go
    )


def states(node_dirs: NodeDirs) -> dict[str, tuple[str, str | None, str | None]]:
    status = read_status(status_path(catalog_dir(node_dirs.root)))
    assert status is not None
    return {e.name: (e.state, e.digest, e.reason) for e in status.entries}


def test_a_moved_tag_reaches_the_catalog_and_a_failing_version_keeps_the_old(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    v1 = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "cat-v1"))
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "add-header", "url": f"oci://{v1.reference}"}])
    shown = catalog_dir(node_dirs.root) / "add-header.wasm"

    with in_process(node_dirs, catalog_settings(node_dirs, registry, listed)) as (driver, _):
        wait_for(lambda: hash_of(shown) == v1.module_sha256, timeout=30, what="v1 in the catalog")
        v2 = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "cat-v2"))
        wait_for(lambda: hash_of(shown) == v2.module_sha256, timeout=30, what="v2 in the catalog")
        # The status follows the swap a moment later (written after the link).
        wait_for(
            lambda: states(node_dirs)["add-header"] == ("ready", v2.module_digest, None),
            what="v2 ready in the status",
        )
        ready = driver.metrics.registry.get_sample_value(
            "csi_wasm_catalog_entries", {"state": "ready"}
        )
        assert ready == 1.0
        # v1 stays under sha256/ for the grace period, and GC keeps both.
        driver.collector.collect()
        by_digest = catalog_dir(node_dirs.root) / "sha256"
        assert hash_of(by_digest / f"{v1.module_sha256}.wasm") == v1.module_sha256
        assert (node_dirs.root / "modules" / v1.module_sha256).is_dir()

        # A version that is not a Wasm module: refused like a publish would, v2 stays.
        push_wasm_artifact(registry, unique_repo, "stable", b"\x00asm truncated")
        wait_for(
            lambda: states(node_dirs)["add-header"][0] == "failed",
            timeout=30,
            what="the failing version reported",
        )
        _, digest, reason = states(node_dirs)["add-header"]
        assert digest == v2.module_digest and reason
        assert hash_of(shown) == v2.module_sha256


def test_entries_added_and_removed_in_the_file_appear_and_disappear_without_a_restart(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    a = push_wasm_artifact(registry, unique_repo, "a", make_module(4096, "cat-a"))
    b = push_wasm_artifact(registry, unique_repo, "b", make_module(4096, "cat-b"))
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "a", "url": f"oci://{a.reference}"}])
    directory = catalog_dir(node_dirs.root)

    with in_process(node_dirs, catalog_settings(node_dirs, registry, listed)):
        wait_for(lambda: hash_of(directory / "a.wasm") == a.module_sha256, timeout=30, what="a")
        write_list(
            listed,
            [
                {"name": "b", "url": f"oci://{b.reference}"},
                {"name": "../x", "url": f"oci://{a.reference}"},
            ],
        )
        wait_for(lambda: hash_of(directory / "b.wasm") == b.module_sha256, timeout=30, what="b")
        wait_for(lambda: not (directory / "a.wasm").exists(), timeout=30, what="a removed")
        wait_for(lambda: states(node_dirs)["b"][0] == "ready", what="b ready in the status")
        rows = states(node_dirs)
        assert rows["../x"][0] == "failed" and "DNS label" in (rows["../x"][2] or "")
        assert sorted(p.name for p in directory.iterdir()) == ["b.wasm", "sha256"]


# --- the catalog volume -----------------------------------------------------------------

CATALOG_VOLUME = {"catalog": "node"}


def mount_line(target: Path) -> tuple[int, set[str]]:
    """(mount id, mount options) of the mount at ``target``, from /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return int(fields[0]), set(fields[5].split(","))
    raise AssertionError(f"nothing is mounted at {target}")


def test_a_pod_mounting_the_catalog_sees_a_moved_tag_without_a_remount(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    v1 = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "vol-v1"))
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "add-header", "url": f"oci://{v1.reference}"}])

    with in_process(node_dirs, catalog_settings(node_dirs, registry, listed)) as (_, kubelet):
        pod = kubelet.new_pod()
        kubelet.publish(pod, CATALOG_VOLUME)
        shown = pod.target / "add-header.wasm"
        wait_for(lambda: hash_of(shown) == v1.module_sha256, timeout=30, what="v1 in the pod")
        mount_id, options = mount_line(pod.target)
        assert {"ro", "nosuid", "nodev", "noexec"} <= options

        v2 = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "vol-v2"))
        wait_for(lambda: hash_of(shown) == v2.module_sha256, timeout=30, what="v2 in the pod")

        assert mount_line(pod.target)[0] == mount_id  # the same mount: nothing remounted
        by_digest = pod.target / "sha256"
        assert hash_of(by_digest / f"{v1.module_sha256}.wasm") == v1.module_sha256
        kubelet.publish(pod, CATALOG_VOLUME)  # idempotent
        assert mount_line(pod.target)[0] == mount_id
        other = kubelet.new_pod()  # its volume already holds a module: no catalog there
        kubelet.publish(other, {"url": f"oci://{v2.reference}"})
        code, message = rpc_error(lambda: kubelet.publish(other, CATALOG_VOLUME))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert f"volume {other.volume_id} is already published" in message
        assert "as another volume; unpublish it first" in message
        kubelet.unpublish(other)
        kubelet.unpublish(pod)
        assert not pod.target.exists()
        assert not list((node_dirs.root / "volumes").iterdir())


def test_a_catalog_volume_never_waits_on_a_registry_and_takes_no_module_attributes(
    node_dirs: NodeDirs, registry: Registry
) -> None:
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "down", "url": "oci://127.0.0.1:9/acme/down:stable"}])

    with in_process(node_dirs, catalog_settings(node_dirs, registry, listed)) as (_, kubelet):
        pod = kubelet.new_pod()
        kubelet.publish(pod, CATALOG_VOLUME, timeout=5)
        assert sorted(p.name for p in pod.target.iterdir()) == ["sha256"]
        clashes = [{"url": "oci://r.io/a:v1"}, {"sha256": "a" * 64}, {"imagePullPolicy": "Always"}]
        for clash in clashes:
            other = kubelet.new_pod()
            code, message = rpc_error(
                lambda: kubelet.publish(other, {**CATALOG_VOLUME, **clash})  # noqa: B023
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "excludes" in message
        other = kubelet.new_pod()
        code, message = rpc_error(lambda: kubelet.publish(other, {"catalog": "cluster"}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'cluster' does not exist; the only catalog is 'node'" in message


def test_restart_and_kill_keep_every_catalog_mount_readable(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    v1 = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "kill-v1"))
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "f", "url": f"oci://{v1.reference}"}])
    flags = [
        "--insecure-registry", registry.host,
        "--prefetch-file", str(listed),
        "--prefetch-refresh", "0.5s",
    ]  # fmt: skip
    driver = DriverProcess(node_dirs, flags).start()
    try:
        with connect(node_dirs) as kubelet:
            pods = [kubelet.new_pod(volume=f"catalog-{i}") for i in range(2)]
            for pod in pods:
                kubelet.publish(pod, CATALOG_VOLUME)
            wait_for(
                lambda: all(hash_of(p.target / "f.wasm") == v1.module_sha256 for p in pods),
                timeout=30,
                what="v1 in both pods",
            )
        ids = [mount_line(p.target)[0] for p in pods]
        driver.kill()  # SIGKILL
        assert all(hash_of(p.target / "f.wasm") == v1.module_sha256 for p in pods)
        driver = DriverProcess(node_dirs, flags).start()
        v2 = push_wasm_artifact(registry, unique_repo, "stable", make_module(4096, "kill-v2"))
        wait_for(
            lambda: all(hash_of(p.target / "f.wasm") == v2.module_sha256 for p in pods),
            timeout=30,
            what="v2 in both pods after the restart",
        )
        assert [mount_line(p.target)[0] for p in pods] == ids
        assert driver.terminate() == 0
        assert all(hash_of(p.target / "f.wasm") == v2.module_sha256 for p in pods)
        driver = DriverProcess(node_dirs, flags).start()
        with connect(node_dirs) as kubelet:
            for pod in pods:
                kubelet.unpublish(pod)
                assert not pod.target.exists()
    finally:
        driver.kill()


def test_a_configmap_list_through_a_kubeconfig_and_a_warning_event_for_a_bad_name(
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(4096, "cm-v1"))
    entries = [
        {"name": "waf", "url": f"oci://{pushed.reference}"},
        {"name": "Bad_Name", "url": f"oci://{pushed.reference}"},
    ]
    with FakeConfigMapApiServer() as api:
        api.put_configmap("csi-wasm", "prefetch", {"prefetch.json": json.dumps(entries)})
        settings = dataclasses.replace(
            node_dirs.settings(insecure_registries=frozenset({registry.host})),
            prefetch_configmap="csi-wasm/prefetch",
            kubeconfig=write_kubeconfig(node_dirs.base / "kubeconfig", api.url),
        )
        with in_process(node_dirs, settings):
            shown = catalog_dir(node_dirs.root) / "waf.wasm"
            wait_for(lambda: hash_of(shown) == pushed.module_sha256, timeout=30, what="waf")
            api.wait_for(lambda: any(r.path.endswith("/events") for r in api.requests))
        [event] = [r.body for r in api.requests if r.path.endswith("/events")]
    assert isinstance(event, dict)
    assert event["involvedObject"]["kind"] == "ConfigMap"
    assert event["involvedObject"]["name"] == "prefetch"
    assert (event["type"], event["reason"]) == ("Warning", "InvalidCatalogEntry")
    assert "'Bad_Name'" in event["message"]


# --- a new version that fails keeps the old one ------------------------------------------


def test_an_unsigned_new_version_under_an_enforcing_rule_keeps_the_signed_one(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str, tmp_path: Path
) -> None:
    signer = Signer.p256()
    key = signer.write_public(tmp_path / "team-a.pub")
    policy = tmp_path / "policy.yaml"
    repo = f"signed/{unique_repo}"
    policy.write_text(
        f'rules:\n- match: "{registry.host}/signed/**"\n  keys: [team-a]\n  mode: enforce\n'
    )
    v1 = push_wasm_artifact(registry, repo, "stable", make_module(4096, "signed-v1"))
    payload = simplesigning_payload(v1.manifest_digest, v1.reference)
    push_signature_tag(registry, repo, v1.manifest_digest, [signed_layer(signer, payload)])
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "signed", "url": f"oci://{v1.reference}"}])
    settings = dataclasses.replace(
        catalog_settings(node_dirs, registry, listed),
        verify=VerifySettings((f"team-a={key}",), str(policy)),
    )
    shown = catalog_dir(node_dirs.root) / "signed.wasm"

    with in_process(node_dirs, settings):
        wait_for(lambda: hash_of(shown) == v1.module_sha256, timeout=30, what="signed v1")
        push_wasm_artifact(registry, repo, "stable", make_module(4096, "unsigned-v2"))
        wait_for(
            lambda: states(node_dirs)["signed"][0] == "failed",
            timeout=30,
            what="the unsigned version refused",
        )
        _, digest, reason = states(node_dirs)["signed"]
        assert digest == v1.module_digest
        assert reason and "sign" in reason
        assert hash_of(shown) == v1.module_sha256


def test_a_registry_that_goes_down_keeps_what_the_catalog_shows(
    node_dirs: NodeDirs, tmp_path: Path
) -> None:
    listed = node_dirs.base / "prefetch.json"
    shown = catalog_dir(node_dirs.root) / "f.wasm"
    with running_registry(tmp_path / "own-registry") as own:
        v1 = push_wasm_artifact(own, "acme/f", "stable", make_module(4096, "down-v1"))
        write_list(listed, [{"name": "f", "url": f"oci://{v1.reference}"}])
        with in_process(node_dirs, catalog_settings(node_dirs, own, listed)) as (_, kubelet):
            wait_for(lambda: hash_of(shown) == v1.module_sha256, timeout=30, what="v1")
            own.stop()
            wait_for(lambda: states(node_dirs)["f"][0] == "failed", timeout=30, what="the outage")
            _, digest, reason = states(node_dirs)["f"]
            assert digest == v1.module_digest and reason
            assert hash_of(shown) == v1.module_sha256
            pod = kubelet.new_pod()
            kubelet.publish(pod, CATALOG_VOLUME, timeout=5)  # never waits on the registry
            assert hash_of(pod.target / "f.wasm") == v1.module_sha256


def test_a_module_fsck_takes_out_is_fetched_again_and_shown_again(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    v1 = push_wasm_artifact(registry, unique_repo, "v1", make_module(4096, "fsck-v1"))
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "pinned", "url": f"oci://{v1.digest_reference}"}])
    shown = catalog_dir(node_dirs.root) / "pinned.wasm"

    with in_process(node_dirs, catalog_settings(node_dirs, registry, listed)):
        wait_for(lambda: hash_of(shown) == v1.module_sha256, timeout=30, what="v1")
        cached = node_dirs.root / "modules" / v1.module_sha256 / "plugin.wasm"
        cached.chmod(0o644)
        with cached.open("r+b") as damaged:  # bit rot, shared by every hard link
            damaged.seek(10)
            damaged.write(b"\xff")
        report = check_store(ModuleStore(node_dirs.root))
        assert [d.digest for d in report.damaged] == [v1.module_sha256]
        assert "pinned.wasm" in report.damaged[0].catalog_removed

        wait_for(lambda: hash_of(shown) == v1.module_sha256, timeout=30, what="v1 again")
        wait_for(lambda: states(node_dirs)["pinned"][0] == "ready", what="ready again")


def test_readers_in_a_pod_never_see_a_partial_missing_or_unknown_module_through_100_swaps(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    modules = [make_module(96 * 1024 + i, f"swap-{i}") for i in range(4)]
    pushed = [push_wasm_artifact(registry, unique_repo, "stable", m) for m in modules[:1]]
    known = {hashlib.sha256(m).hexdigest() for m in modules}
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "swapped", "url": f"oci://{pushed[0].reference}"}])
    settings = dataclasses.replace(
        catalog_settings(node_dirs, registry, listed), prefetch_refresh=0.02
    )

    with in_process(node_dirs, settings) as (_, kubelet):
        pod = kubelet.new_pod()
        kubelet.publish(pod, CATALOG_VOLUME)
        shown = pod.target / "swapped.wasm"
        wait_for(lambda: hash_of(shown) in known, timeout=30, what="the first version")
        stop = threading.Event()
        errors: list[str] = []
        reads = [0] * 4

        def read(reader: int) -> None:
            while not stop.is_set():
                try:
                    with shown.open("rb") as handle:
                        data = handle.read()
                except OSError as error:
                    errors.append(f"open/read failed: {error}")
                    return
                if hashlib.sha256(data).hexdigest() not in known:
                    errors.append(f"unknown content of {len(data)} bytes")
                    return
                reads[reader] += 1

        readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
        for reader in readers:
            reader.start()
        try:
            for swap in range(1, 101):
                module = modules[swap % len(modules)]
                push_wasm_artifact(registry, unique_repo, "stable", module)
                digest = hashlib.sha256(module).hexdigest()
                wait_for(lambda: hash_of(shown) == digest, timeout=30, what=f"swap {swap}")  # noqa: B023
        finally:
            stop.set()
            for reader in readers:
                reader.join(10)
        assert errors == []
        assert all(reads), reads


def test_a_driver_started_with_no_list_any_more_empties_the_names_not_sha256(
    node_dirs: NodeDirs, registry: Registry, unique_repo: str
) -> None:
    v1 = push_wasm_artifact(registry, unique_repo, "v1", make_module(4096, "nolist-v1"))
    listed = node_dirs.base / "prefetch.json"
    write_list(listed, [{"name": "f", "url": f"oci://{v1.reference}"}])
    directory = catalog_dir(node_dirs.root)
    with in_process(node_dirs, catalog_settings(node_dirs, registry, listed)):
        wait_for(lambda: hash_of(directory / "f.wasm") == v1.module_sha256, what="f")

    unlisted = dataclasses.replace(
        catalog_settings(node_dirs, registry, listed), prefetch_file=None
    )
    with in_process(node_dirs, unlisted):
        assert not (directory / "f.wasm").exists()
        assert hash_of(directory / "sha256" / f"{v1.module_sha256}.wasm") == v1.module_sha256
        assert states(node_dirs) == {}
