"""Run the driver: build the parts, serve gRPC on a unix socket, stop cleanly on SIGTERM.

Before the socket opens, the records are reconciled with the mount table (see
:mod:`csi_wasm.cache.reconcile`); once serving, a background thread garbage-collects the
cache every ``--gc-interval`` (see :mod:`csi_wasm.cache.gc`).

gRPC is served by grpc.aio on an event loop of its own thread (:mod:`.loop`): calls
that only answer (Probe, NodeGetInfo...) are answered there, blocking work runs on
bounded worker pools, and a publish waiting for a pull holds no thread
(:mod:`csi_wasm.workers`).

On SIGTERM the socket is removed and the process exits; published volumes stay
mounted, so running pods never notice a restart or an upgrade of the driver.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csi_wasm import __version__, logs
from csi_wasm._proto import csi_pb2_grpc
from csi_wasm.access import AccessRecords
from csi_wasm.attributes import NODE_CATALOG
from csi_wasm.cache.gc import CacheCollector, GcLoop, PinHandover, log_report
from csi_wasm.cache.gc_requests import GcListener
from csi_wasm.cache.reconcile import reconcile
from csi_wasm.cache.store import ModuleStore
from csi_wasm.cache.volumes import VolumeRecords
from csi_wasm.catalog.catalog import Catalog
from csi_wasm.catalog.wiring import ListFollowers, follow_lists, open_catalog
from csi_wasm.kube.configmap import ConfigMapWatcher
from csi_wasm.kube.events import EventRecorder, recorder_from_environment
from csi_wasm.metrics import Metrics, MetricsServer, StateSnapshot, serve_metrics
from csi_wasm.mirrors import MirrorHealth, Mirrors, parse_mirror
from csi_wasm.mounts import KernelMounter
from csi_wasm.node import NodeService
from csi_wasm.prefetch import Prefetcher, parse_prefetch_flag
from csi_wasm.puller import Puller
from csi_wasm.registry import Keychain, RegistryClient, RegistryOptions
from csi_wasm.registry.credentials import keychain_from_file
from csi_wasm.server.identity import IdentityServicer
from csi_wasm.server.loop import LoopThread
from csi_wasm.server.node import NodeServicer
from csi_wasm.settings import ServeSettings, VerifySettings
from csi_wasm.verify.gate import SignatureGate
from csi_wasm.verify.keys import PublicKey, load_keys
from csi_wasm.verify.policy import Policy, load_policy
from csi_wasm.workers import Workers

log = logging.getLogger(__name__)

# Threads for the blocking steps of RPCs. Waiting for a pull takes none, so these only
# bound how many cache lookups, record writes and mounts run at once (GIL-bound work:
# more threads would only contend), and how many private-module access checks.
LOCAL_WORKERS = 4
NETWORK_WORKERS = 8
READINESS_WORKERS = 1  # Probe's check of the root: never behind publishes


def socket_path(endpoint: str) -> Path:
    """The filesystem path of a ``unix://`` endpoint."""
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            path = endpoint[len(prefix) :]
            if path.startswith("/"):
                return Path(path)
    raise ValueError(f"--endpoint {endpoint!r} must be unix:///absolute/path/to/csi.sock")


class _PullMetrics:
    """The puller's observer, reporting to Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def cache_lookup(self, hit: bool) -> None:
        self._metrics.observe_cache_lookup(hit)

    def pull_finished(self, result: str, seconds: float, size: int) -> None:
        self._metrics.observe_pull(result, seconds, size)

    def module_rejected(self, reason: str) -> None:
        self._metrics.observe_rejection(reason)


class _SignatureMetrics:
    """The signature gate's observer, reporting to Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def signature_checked(self, result: str, layout: str) -> None:
        self._metrics.observe_signature_check(result, layout)


def _load_verification(settings: VerifySettings) -> tuple[dict[str, PublicKey], Policy]:
    """Keys and policy, loaded first: a bad file stops ``serve`` (ValueError, named)."""
    keys = load_keys(settings.keys)
    policy_file = Path(settings.policy) if settings.policy else None
    policy = load_policy(policy_file, keys, unmatched_deny=settings.unmatched_deny)
    if keys:
        log.info(
            "signature verification configured",
            extra={
                "fields": {
                    "keys": {name: key.description for name, key in keys.items()},
                    "rules": len(policy.rules),
                    "unmatched": "deny" if policy.unmatched_deny else "allow",
                }
            },
        )
    return keys, policy


class _GcMetrics:
    """The collector's observer, reporting to Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def module_evicted(self, reason: str, size: int) -> None:
        self._metrics.observe_eviction(reason, size)


@dataclass
class Driver:
    """A running driver; :meth:`stop` shuts it down."""

    loop: LoopThread
    server: grpc.aio.Server
    work: Workers
    puller: Puller
    socket: Path
    registry: RegistryClient
    metrics: Metrics
    events: EventRecorder
    collector: CacheCollector
    gc: GcLoop
    prefetcher: Prefetcher
    watcher: ConfigMapWatcher | None = None
    metrics_server: MetricsServer | None = field(default=None)
    catalog: Catalog | None = None
    lists: ListFollowers | None = None
    gc_listener: GcListener | None = None

    def stop(self, grace: float = 5.0) -> None:
        if not self.loop.closed:  # a second stop() is harmless, as each part's is
            self.loop.run(self.server.stop(grace))
            self.loop.stop()
            self.work.shutdown()
        if self.gc_listener is not None:
            self.gc_listener.close()
        if self.lists is not None:
            self.lists.stop()  # the ConfigMap watcher too
        elif self.watcher is not None:
            self.watcher.stop()
        self.prefetcher.stop()
        self.gc.stop()
        self.events.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.registry.close()
        self.socket.unlink(missing_ok=True)
        logs.flush()  # every RPC's line is out before stop returns


def _node_keychain(path: str | None) -> Keychain | None:
    return None if path is None else keychain_from_file(path)


def start(settings: ServeSettings) -> Driver:
    node, pull = settings.node, settings.pull
    verification = _load_verification(settings.verify)
    mirrors = Mirrors(parse_mirror(text) for text in pull.registry_mirrors)
    node_keychain = _node_keychain(pull.docker_config)
    path = socket_path(settings.endpoint)

    store = ModuleStore(node.root)
    records = VolumeRecords(node.root / "volumes")
    reconcile(store, records, node.pods_dir)  # also prepares both
    access = AccessRecords(node.root / "access", window=pull.credential_recheck)
    access.prepare()
    registry = RegistryClient(
        RegistryOptions(
            insecure_registries=pull.insecure_registries,
            ca_file=pull.registry_ca,
            mirror_hosts=mirrors.hosts(),
        )
    )
    metrics = Metrics()
    mirror_health = MirrorHealth(mirrors.hosts(), on_change=metrics.set_mirror_up)
    collector = CacheCollector(store, records, settings.cache, observer=_GcMetrics(metrics))
    puller = Puller(
        store,
        registry,
        pull,
        access,
        node_keychain=node_keychain,
        mirrors=mirrors,
        mirror_health=mirror_health,
        observer=_PullMetrics(metrics),
        space=collector,
        signatures=SignatureGate(*verification, store, registry, _SignatureMetrics(metrics)),
    )
    events = recorder_from_environment(
        node.node_id, driver_name=node.driver_name, kubeconfig=settings.kubeconfig
    )
    catalog = open_catalog(settings, store, collector, metrics)
    service = NodeService(
        node.pods_dir, puller, records, KernelMounter(), events, {NODE_CATALOG: catalog.path}
    )

    def snapshot() -> StateSnapshot:
        cache_bytes, cache_modules = store.usage()
        return StateSnapshot(cache_bytes, cache_modules, records.count(), puller.in_flight())

    metrics.set_state_source(snapshot)

    work = Workers(LOCAL_WORKERS, NETWORK_WORKERS, READINESS_WORKERS)
    identity = IdentityServicer(node.driver_name, store.usable, work.readiness, metrics.observe_rpc)
    node_servicer = NodeServicer(
        service, work, node.node_id, pull.pull_timeout, metrics.observe_rpc
    )
    _remove_stale_socket(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics_server = None
    if settings.metrics_address:
        metrics_server = serve_metrics(settings.metrics_address, metrics, store.usable)
    # Before the first publish: csi-wasm gc collects through us, so it sees our pins.
    gc_listener = GcListener(store, collector.requested)
    gc_listener.start()
    loop = LoopThread()
    server = loop.run(_open_server(identity, node_servicer, path))
    gc = GcLoop(collector, settings.cache.gc_interval, log_report)
    gc.start()
    prefetcher, lists = _start_prefetch(settings, puller, collector, metrics, catalog, events)
    log.info(
        "serving",
        extra={
            "fields": {
                "endpoint": settings.endpoint,
                "version": __version__,
                "driver": node.driver_name,
                "node_id": node.node_id,
                "root": os.fspath(node.root),
                "published": records.count(),
                "metrics": settings.metrics_address,
                "mirrors": [str(m) for m in pull.registry_mirrors],
                "cache_max_bytes": settings.cache.max_bytes,
                "cache_ttl_s": settings.cache.ttl,
            }
        },
    )
    return Driver(
        loop,
        server,
        work,
        puller,
        path,
        registry,
        metrics,
        events,
        collector,
        gc,
        prefetcher,
        lists.watcher,
        metrics_server,
        catalog,
        lists,
        gc_listener,
    )


async def _open_server(
    identity: IdentityServicer, node: NodeServicer, path: Path
) -> grpc.aio.Server:
    """The gRPC server, listening; created on the loop it will run on."""
    server = grpc.aio.server()
    csi_pb2_grpc.add_IdentityServicer_to_server(identity, server)
    csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server


def _start_prefetch(
    settings: ServeSettings,
    puller: Puller,
    collector: CacheCollector,
    metrics: Metrics,
    catalog: Catalog,
    events: EventRecorder,
) -> tuple[Prefetcher, ListFollowers]:
    """Pull listed modules before pods ask; the collector never evicts them while listed."""
    timeout = settings.pull.pull_timeout
    # A fetch returns a pinned module: its pin is held until the prefetcher lists it.
    # The catalog links the modules of named entries while that pin holds.
    handover = PinHandover(puller.release)
    fetch = catalog.observing(lambda request: puller.get(request, None, wait=timeout))
    prefetcher = Prefetcher(
        lambda request: handover.keep(fetch(request)),
        static=[parse_prefetch_flag(value) for value in settings.prefetch],
        on_result=lambda _url, ok: metrics.observe_prefetch(ok),
        refresh=settings.prefetch_refresh,
    )
    collector.add_pin_source(handover.listing(prefetcher.pinned))
    lists = follow_lists(settings, catalog, prefetcher, events)
    prefetcher.start()
    lists.start()
    return prefetcher, lists


def serve(settings: ServeSettings) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    driver = start(settings)
    stop.wait()
    driver.stop()
    log.info("stopped; published volumes stay mounted")
    return 0


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"--endpoint {path} exists and is not a socket; refusing to replace it")
    path.unlink()
