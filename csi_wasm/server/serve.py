"""Run the driver: build the parts, serve gRPC on a unix socket, stop cleanly on SIGTERM.

On SIGTERM the socket is removed and the process exits; published volumes stay
mounted, so running pods never notice a restart or an upgrade of the driver.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from csi_wasm import __version__
from csi_wasm._proto import csi_pb2_grpc
from csi_wasm.mounts import KernelMounter
from csi_wasm.node import NodeService
from csi_wasm.puller import Puller
from csi_wasm.registry import RegistryClient, RegistryOptions
from csi_wasm.server.identity import IdentityServicer
from csi_wasm.server.node import NodeServicer
from csi_wasm.settings import ServeSettings
from csi_wasm.store import ModuleStore
from csi_wasm.volumes import VolumeRecords

log = logging.getLogger(__name__)

RPC_WORKERS = 32  # kubelet may publish many pods at once; most calls wait on a pull


def socket_path(endpoint: str) -> Path:
    """The filesystem path of a ``unix://`` endpoint."""
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            path = endpoint[len(prefix) :]
            if path.startswith("/"):
                return Path(path)
    raise ValueError(f"--endpoint {endpoint!r} must be unix:///absolute/path/to/csi.sock")


@dataclass
class Driver:
    """A running driver; :meth:`stop` shuts it down."""

    server: grpc.Server
    socket: Path
    registry: RegistryClient

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait()
        self.registry.close()
        self.socket.unlink(missing_ok=True)


def start(settings: ServeSettings) -> Driver:
    node = settings.node
    store = ModuleStore(node.root)
    store.prepare()
    records = VolumeRecords(node.root / "volumes")
    records.prepare()
    registry = RegistryClient(
        RegistryOptions(
            insecure_registries=settings.pull.insecure_registries,
            ca_file=settings.pull.registry_ca,
        )
    )
    puller = Puller(store, registry, settings.pull)
    service = NodeService(node.pods_dir, puller, records, KernelMounter())

    server = grpc.server(ThreadPoolExecutor(max_workers=RPC_WORKERS, thread_name_prefix="rpc"))
    csi_pb2_grpc.add_IdentityServicer_to_server(
        IdentityServicer(node.driver_name, store.usable), server
    )
    csi_pb2_grpc.add_NodeServicer_to_server(
        NodeServicer(service, node.node_id, settings.pull.pull_timeout), server
    )
    path = socket_path(settings.endpoint)
    _remove_stale_socket(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    log.info(
        "serving",
        extra={
            "fields": {
                "endpoint": settings.endpoint,
                "version": __version__,
                "driver": node.driver_name,
                "node_id": node.node_id,
                "root": os.fspath(node.root),
                "published": len(records.all()),
            }
        },
    )
    return Driver(server, path, registry)


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
