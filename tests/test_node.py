"""NodeService without gRPC: what it tells the pod's Events, with real pulls and mounts.

The event recorder is the seam here (in a cluster it talks to the API server; its own
requests are tested in test_events.py against a fake API server).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.cosign import Signer
from support.driver import NodeDirs
from support.kubelet import PodVolume
from support.oci import push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.access import AccessRecords
from csi_wasm.attributes import ModuleRequest, PodInfo
from csi_wasm.cache.store import ModuleStore
from csi_wasm.cache.volumes import VolumeRecord, VolumeRecords
from csi_wasm.errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidModule,
    NotFound,
    SignatureRejected,
    Unavailable,
)
from csi_wasm.mounts import KernelMounter
from csi_wasm.node import NodeService, PublishRequest
from csi_wasm.puller import Lookup, PulledModule, Puller
from csi_wasm.registry import Keychain, RegistryClient, RegistryOptions, display_url
from csi_wasm.settings import PullSettings
from csi_wasm.verify.gate import SignatureGate
from csi_wasm.verify.keys import parse_public_key
from csi_wasm.verify.policy import parse_policy
from csi_wasm.workers import Workers


@dataclass
class RecordingEvents:
    seen: list[tuple[str, ...]] = field(default_factory=list)

    def pulled(
        self, pod: PodInfo, reference: str, digest: str, size: int, seconds: float, cached: bool
    ) -> None:
        self.seen.append(("Pulled", str(pod), reference, digest, str(size), str(cached)))

    def failed(self, pod: PodInfo, reason: str, message: str) -> None:
        self.seen.append((reason, str(pod), message))

    def close(self, timeout: float = 2.0) -> None:
        return


@pytest.fixture
def events() -> RecordingEvents:
    return RecordingEvents()


@pytest.fixture
def store(node_dirs: NodeDirs) -> ModuleStore:
    s = ModuleStore(node_dirs.root)
    s.prepare()
    return s


@pytest.fixture
def client(registry: Registry) -> Iterator[RegistryClient]:
    made = RegistryClient(RegistryOptions(insecure_registries=frozenset({registry.host})))
    yield made
    made.close()


@pytest.fixture
def make_service(
    node_dirs: NodeDirs,
    registry: Registry,
    events: RecordingEvents,
    store: ModuleStore,
    client: RegistryClient,
) -> Callable[..., NodeService]:
    def make(signatures: SignatureGate | None = None) -> NodeService:
        settings = PullSettings(insecure_registries=frozenset({registry.host}))
        records = VolumeRecords(node_dirs.root / "volumes")
        records.prepare()
        access = AccessRecords(node_dirs.root / "access")
        access.prepare()
        puller = Puller(store, client, settings, access, signatures=signatures)
        pods = node_dirs.kubelet_dir / "pods"
        return NodeService(pods, puller, records, KernelMounter(), events)

    return make


@pytest.fixture
def service(make_service: Callable[..., NodeService]) -> NodeService:
    return make_service()


def _pod(dirs: NodeDirs, name: str) -> PodVolume:
    parent = dirs.kubelet_dir / "pods" / f"uid-{name}" / "volumes" / "kubernetes.io~csi" / "wasm"
    parent.mkdir(parents=True)
    return PodVolume(name, "team", f"uid-{name}", "wasm", parent / "mount")


def _request(pod: PodVolume, url: str, **extra: str) -> PublishRequest:
    return PublishRequest(
        pod.volume_id, str(pod.target), False, pod.context({"url": url, **extra}), {}
    )


def test_publish_reports_pulled_then_already_on_node(
    service: NodeService,
    events: RecordingEvents,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    module = make_module(2048, "events")
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    first, second = _pod(node_dirs, "first"), _pod(node_dirs, "second")
    service.publish(_request(first, pushed.reference), wait=30)
    service.publish(_request(second, pushed.reference), wait=30)
    service.publish(_request(second, pushed.reference), wait=30)  # idempotent: no new event
    assert events.seen == [
        ("Pulled", "team/first", pushed.reference, pushed.module_sha256, str(len(module)), "False"),
        ("Pulled", "team/second", pushed.reference, pushed.module_sha256, str(len(module)), "True"),
    ]


def test_failures_report_the_rpc_message(
    service: NodeService,
    events: RecordingEvents,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(1024, "bad"))
    pod = _pod(node_dirs, "broken")
    with pytest.raises(NotFound) as missing:
        service.publish(_request(pod, f"{registry.host}/{unique_repo}:v2"), wait=30)
    with pytest.raises(FailedPrecondition) as mismatch:
        service.publish(_request(pod, pushed.reference, sha256="0" * 64), wait=30)
    assert events.seen == [
        ("FailedPull", "team/broken", missing.value.message),
        ("InvalidModule", "team/broken", mismatch.value.message),
    ]


def test_publish_leaves_no_pin_and_marks_uses(
    service: NodeService,
    store: ModuleStore,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(2048, "uses"))
    first, second = _pod(node_dirs, "first"), _pod(node_dirs, "second")
    module_dir = store.module_dir(pushed.module_sha256)

    service.publish(_request(first, pushed.reference), wait=30)
    assert store.pinned() == set()  # the volume record keeps it now
    os.utime(module_dir, (1_000_000, 1_000_000))
    service.publish(_request(second, pushed.reference), wait=30)  # warm: picks it
    assert store.pinned() == set()
    assert module_dir.stat().st_mtime > 1_000_000
    os.utime(module_dir, (1_000_000, 1_000_000))
    service.unpublish(first.volume_id, str(first.target))  # a user went away
    assert module_dir.stat().st_mtime > 1_000_000


def test_a_failed_publish_releases_its_pin(
    service: NodeService,
    store: ModuleStore,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    pushed = push_wasm_artifact(registry, unique_repo, "v1", make_module(2048, "fails"))
    pod = _pod(node_dirs, "orphan")
    pod.target.parent.rmdir()  # kubelet's parent directory is missing
    with pytest.raises(InvalidArgument):
        service.publish(_request(pod, pushed.reference), wait=30)
    assert store.has_module(pushed.module_sha256)
    assert store.pinned() == set()


@dataclass
class VanishingModules:
    """A module source whose module another process removed between lookup and mount."""

    path: Path
    released: list[str] = field(default_factory=list)

    def find(self, request: ModuleRequest, keychain: Keychain | None) -> Lookup:
        return Lookup(module=PulledModule("ab" * 32, self.path, 8, None, from_cache=True))

    async def ready(self, lookup: Lookup, wait: float, work: Workers) -> None:
        return

    def collect(self, lookup: Lookup) -> PulledModule:
        assert lookup.module is not None
        return lookup.module

    def abandon(self, lookup: Lookup) -> None:
        raise AssertionError("a cached module is always collected")

    def release(self, module: PulledModule) -> None:
        self.released.append(module.digest)

    def unused(self, module_digest: str) -> None:
        return


def test_a_module_removed_before_its_mount_is_unavailable(node_dirs: NodeDirs) -> None:
    records = VolumeRecords(node_dirs.root / "volumes")
    records.prepare()
    modules = VanishingModules(node_dirs.root / "modules" / ("ab" * 32))
    service = NodeService(node_dirs.kubelet_dir / "pods", modules, records, KernelMounter())
    pod = _pod(node_dirs, "vanished")
    with pytest.raises(Unavailable, match="removed from the cache"):
        service.publish(_request(pod, "r.io/a/b:v1"), wait=30)
    assert modules.released == ["ab" * 32]
    assert records.all() == []
    assert not pod.target.exists()


def test_signature_failures_are_reported_as_signature_events(
    node_dirs: NodeDirs,
    registry: Registry,
    events: RecordingEvents,
    store: ModuleStore,
    client: RegistryClient,
    make_service: Callable[..., NodeService],
    unique_repo: str,
) -> None:
    keys = {"team-a": parse_public_key("team-a", Signer.p256().public_pem(), "team-a")}
    rules = (
        f'rules:\n- {{match: "{registry.host}/{unique_repo}/enforced", keys: [team-a]}}\n'
        f'- {{match: "{registry.host}/{unique_repo}/warned", keys: [team-a], mode: warn}}\n'
        f'- {{match: "{registry.host}/v2/{unique_repo}/warned/**", keys: [team-a], mode: warn}}\n'
    )
    gate = SignatureGate(keys, parse_policy(rules, "p", keys), store, client)
    service = make_service(signatures=gate)
    module = make_module(1024, "unsigned")
    enforced = push_wasm_artifact(registry, f"{unique_repo}/enforced", "v1", module)
    warned = push_wasm_artifact(registry, f"{unique_repo}/warned", "v1", module)
    with pytest.raises(SignatureRejected) as refused:
        service.publish(_request(_pod(node_dirs, "a"), enforced.reference), wait=30)
    service.publish(_request(_pod(node_dirs, "b"), warned.reference), wait=30)
    blob_url = f"http://{registry.host}/v2/{unique_repo}/warned/blobs/{warned.layer_digest}"
    url_pod = _pod(node_dirs, "c")
    service.publish(_request(url_pod, blob_url, sha256=warned.module_sha256), wait=30)
    assert (url_pod.target / "plugin.wasm").read_bytes() == module
    assert events.seen[0] == ("SignatureVerificationFailed", "team/a", refused.value.message)
    reason, pod, message = events.seen[1]
    assert (reason, pod) == ("SignatureVerificationFailed", "team/b")
    assert message.startswith(f"{warned.reference}: rule ") and "0 of 0 signatures" in message
    assert events.seen[2][0] == "Pulled"
    assert events.seen[3] == (
        "SignatureVerificationFailed",
        "team/c",
        f"{display_url(blob_url)}: a warn rule asks for a signature, but a module fetched by URL "
        "has none to check",
    )


class FailingDisk(VolumeRecords):
    """Volume records on a disk whose reads fail with EIO (publish and unpublish read first).

    No filesystem the tests can make gives EIO on demand, so this one comes from the
    records' storage seam; read-only, full and descriptor-starved roots are real in
    tests/server/test_root_faults.py.
    """

    def get(self, volume_id: str) -> VolumeRecord | None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(self._path(volume_id)))


def test_an_io_error_is_unavailable_naming_the_file_and_told_to_the_pod(
    node_dirs: NodeDirs, events: RecordingEvents
) -> None:
    records = FailingDisk(node_dirs.root / "volumes")
    modules = VanishingModules(node_dirs.root / "modules" / ("ab" * 32))
    service = NodeService(node_dirs.kubelet_dir / "pods", modules, records, KernelMounter(), events)
    pod = _pod(node_dirs, "eio")
    with pytest.raises(Unavailable) as info:
        service.publish(_request(pod, "r.io/a/b:v1"), wait=30)
    message = info.value.message
    assert message.startswith(f"{records.directory}/")
    assert "Input/output error; the disk reports I/O errors: check the node's disk" in message
    assert events.seen == [("FailedPull", "team/eio", message)]
    with pytest.raises(Unavailable, match="Input/output error"):
        service.unpublish(pod.volume_id, str(pod.target))


def test_an_invalid_module_is_an_invalid_module_event(
    service: NodeService,
    events: RecordingEvents,
    node_dirs: NodeDirs,
    registry: Registry,
    unique_repo: str,
) -> None:
    module = make_module(1024, "not-proxy-wasm", proxy_wasm=False)
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    pod = _pod(node_dirs, "plain")
    with pytest.raises(InvalidModule) as refused:
        service.publish(_request(pod, pushed.reference), wait=30)
    assert refused.value.reason == "no_abi_export"
    assert events.seen == [("InvalidModule", "team/plain", refused.value.message)]
