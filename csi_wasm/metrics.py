"""Prometheus metrics and the small HTTP server that exposes them.

Served at ``/metrics`` on ``--metrics-address`` in the Prometheus text format, next to
``/healthz`` (200 while the process serves) and ``/readyz`` (200 once the driver is ready,
503 otherwise).  Every metric lives in its own registry (not the library's global one), so
only the names below are exposed; no label takes values that grow with pods, volumes,
references or digests.

Metrics:

- ``csi_wasm_operations_total{method,code}`` (counter): CSI calls handled, by method
  (``NodePublishVolume``, ...; ``other`` for a method the driver does not serve) and gRPC
  code (``OK``, ``NOT_FOUND``, ...).
- ``csi_wasm_operation_duration_seconds{method}`` (histogram, 0.5 ms to 120 s): time to
  answer a CSI call.
- ``csi_wasm_pulls_total{result}`` (counter): module pulls from a registry that finished,
  by result (``success`` or the failing gRPC code in lower case, e.g. ``not_found``).
- ``csi_wasm_pull_duration_seconds`` (histogram, 10 ms to 600 s): time a finished pull took.
- ``csi_wasm_pull_bytes_total`` (counter): bytes downloaded by successful pulls.
- ``csi_wasm_cache_lookups_total{result}`` (counter): cache lookups by digest, ``hit`` or
  ``miss``.
- ``csi_wasm_gc_evictions_total{reason}`` (counter): modules evicted from the cache, by
  reason: ``ttl`` (unused longer than ``--cache-ttl``), ``size`` (the cache was over
  ``--cache-max-bytes``) or ``disk`` (a pull needed free disk space).
- ``csi_wasm_gc_freed_bytes_total`` (counter): bytes of modules evicted from the cache.
- ``csi_wasm_module_rejections_total{reason}`` (counter): modules refused by validation
  (each pull that refused one, and each publish refused from the cache), by reason:
  ``structure`` (not valid WebAssembly), ``no_abi_export``, ``unknown_abi_version``,
  ``no_memory``, ``no_allocator`` or ``foreign_import`` (not a proxy-wasm module Envoy can
  load).
- ``csi_wasm_prefetch_attempts_total{result}`` (counter): prefetches of listed modules,
  ``success`` or ``failure`` (failures are retried with backoff).
- ``csi_wasm_cache_bytes`` (gauge): bytes of modules held in the node cache.
- ``csi_wasm_cache_modules`` (gauge): modules held in the node cache.
- ``csi_wasm_published_volumes`` (gauge): volumes currently published to pods.
- ``csi_wasm_pulls_in_flight`` (gauge): pulls running now.
- ``csi_wasm_mirror_up{mirror}`` (gauge): 1 while a ``--registry-mirror`` host is used, 0
  while it is marked down after a failure (pulls go to the source until its backoff ends);
  one series per configured mirror host.
- ``csi_wasm_signature_verifications_total{result,layout}`` (counter): signature checks
  that went to the registry, by ``result`` (``verified``, ``rejected``, ``warned``: failed
  under a warn rule and served, ``error``: the registry failed) and the ``layout`` of the
  accepted signature (``simplesigning``, ``bundle``; ``none`` when none verified).
- ``csi_wasm_build_info{version,python}`` (gauge, always 1): driver and Python versions.
- ``csi_wasm_catalog_entries{state}`` (gauge): node catalog entries by state, ``ready``,
  ``pending`` or ``failed`` (computed at scrape time; see :meth:`Metrics.set_catalog_source`).

The four state gauges are computed at scrape time from the source given to
:meth:`Metrics.set_state_source`; they are absent until one is set, and absent from a
scrape whose source raised (the error is logged).  Counters and histograms do not expose
the ``*_created`` series: the text format gives them no meaning and they double the
number of series.
"""

from __future__ import annotations

import errno
import logging
import platform
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, cast
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from csi_wasm import __version__
from csi_wasm.faults import FaultLog
from csi_wasm.verify.abi import REASONS as _REJECTION_REASONS

__all__ = ["Metrics", "MetricsServer", "StateSnapshot", "serve_metrics"]

_log = logging.getLogger(__name__)

# gRPC status code names, as ``grpc.StatusCode.<NAME>.name`` spells them.
_GRPC_CODES: Final = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
_PULL_RESULTS: Final = frozenset({"success"} | {c.lower() for c in _GRPC_CODES - {"OK"}})

# The CSI services a node driver serves.  Any other method name (a client can send
# anything over the socket) is counted as "other", so the label stays bounded.
_CSI_METHODS: Final = frozenset(
    {
        "GetPluginInfo",
        "GetPluginCapabilities",
        "Probe",
        "NodeStageVolume",
        "NodeUnstageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeGetVolumeStats",
        "NodeExpandVolume",
        "NodeGetCapabilities",
        "NodeGetInfo",
    }
)
_OTHER_METHOD: Final = "other"
_EVICTION_REASONS: Final = frozenset({"ttl", "size", "disk"})

_OPERATION_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_PULL_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


@dataclass(frozen=True)
class StateSnapshot:
    """What the state gauges report at one scrape."""

    cache_bytes: int
    cache_modules: int
    published_volumes: int
    pulls_in_flight: int


class _WithoutCreated:
    """Exposes client metrics without their ``*_created`` samples."""

    def __init__(self, metrics: Sequence[Counter | Histogram | Gauge]) -> None:
        self._metrics = tuple(metrics)

    def describe(self) -> Iterable[Metric]:
        for metric in self._metrics:
            yield from metric.describe()

    def collect(self) -> Iterable[Metric]:
        for metric in self._metrics:
            for family in metric.collect():
                created = family.name + "_created"
                family.samples = [s for s in family.samples if s.name != created]
                yield family


_STATE_GAUGES: Final = (
    ("csi_wasm_cache_bytes", "Bytes of modules held in the node cache.", "cache_bytes"),
    ("csi_wasm_cache_modules", "Modules held in the node cache.", "cache_modules"),
    ("csi_wasm_published_volumes", "Volumes currently published to pods.", "published_volumes"),
    ("csi_wasm_pulls_in_flight", "Module pulls running now.", "pulls_in_flight"),
)


class _StateCollector:
    """Computes the state gauges at scrape time from a source set later."""

    def __init__(self) -> None:
        self.source: Callable[[], StateSnapshot] | None = None
        # A root out of descriptors fails every scrape alike: one line, not one per scrape.
        self._reads = FaultLog(_log, "reading the state gauges (left out meanwhile)")

    def describe(self) -> Iterable[Metric]:
        # Registration must not call the source (it may not exist yet).
        for name, documentation, _ in _STATE_GAUGES:
            yield GaugeMetricFamily(name, documentation)

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            return []
        try:
            snapshot = source()
        except Exception as error:
            self._reads.failed(error)
            return []
        self._reads.succeeded()
        return [
            GaugeMetricFamily(name, documentation, value=getattr(snapshot, field))
            for name, documentation, field in _STATE_GAUGES
        ]


class _CatalogCollector:
    """``csi_wasm_catalog_entries{state}`` at scrape time, from a source set later."""

    NAME: Final = "csi_wasm_catalog_entries"
    HELP: Final = "Node catalog entries, by state (ready, pending or failed)."

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            return []
        try:
            counts = source()
        except Exception:
            _log.warning("catalog metrics source failed; gauge left out", exc_info=True)
            return []
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        return [family]


# The signature series that exist (a check that passed names the layout that did).
_SIGNATURE_SERIES = (
    ("verified", "simplesigning"),
    ("verified", "bundle"),
    ("rejected", "none"),
    ("warned", "none"),
    ("error", "none"),
)


class Metrics:
    """The driver's metrics, in their own registry unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry: CollectorRegistry = registry if registry is not None else CollectorRegistry()
        self._operations = Counter(
            "csi_wasm_operations",
            "CSI calls handled, by method and gRPC code.",
            ["method", "code"],
            registry=None,
        )
        self._operation_seconds = Histogram(
            "csi_wasm_operation_duration_seconds",
            "Time to answer a CSI call, by method.",
            ["method"],
            buckets=_OPERATION_BUCKETS,
            registry=None,
        )
        self._pulls = Counter(
            "csi_wasm_pulls",
            "Finished module pulls, by result (success or the gRPC code in lower case).",
            ["result"],
            registry=None,
        )
        self._pull_seconds = Histogram(
            "csi_wasm_pull_duration_seconds",
            "Time a finished module pull took.",
            buckets=_PULL_BUCKETS,
            registry=None,
        )
        self._pull_bytes = Counter(
            "csi_wasm_pull_bytes",
            "Bytes downloaded by successful module pulls.",
            registry=None,
        )
        self._cache_lookups = Counter(
            "csi_wasm_cache_lookups",
            "Module cache lookups by digest, by result (hit or miss).",
            ["result"],
            registry=None,
        )
        self._evictions = Counter(
            "csi_wasm_gc_evictions",
            "Modules evicted from the cache, by reason (ttl, size or disk).",
            ["reason"],
            registry=None,
        )
        self._freed_bytes = Counter(
            "csi_wasm_gc_freed_bytes",
            "Bytes of modules evicted from the cache.",
            registry=None,
        )
        self._rejections = Counter(
            "csi_wasm_module_rejections",
            "Modules refused by validation, by reason.",
            ["reason"],
            registry=None,
        )
        self._prefetches = Counter(
            "csi_wasm_prefetch_attempts",
            "Prefetches of listed modules, by result (success or failure).",
            ["result"],
            registry=None,
        )
        self._mirror_up = Gauge(
            "csi_wasm_mirror_up",
            "1 while a registry mirror is used, 0 while it is marked down after a failure.",
            ["mirror"],
            registry=None,
        )
        self._signature_checks = Counter(
            "csi_wasm_signature_verifications",
            "Signature checks that went to the registry, by result and layout.",
            ["result", "layout"],
            registry=None,
        )
        build_info = Gauge(
            "csi_wasm_build_info",
            "Driver and Python versions; always 1.",
            ["version", "python"],
            registry=None,
        )
        build_info.labels(version=__version__, python=platform.python_version()).set(1)
        # Known label values start at zero, so rates work from the first scrape.
        self._pulls.labels(result="success")
        self._cache_lookups.labels(result="hit")
        self._cache_lookups.labels(result="miss")
        for reason in sorted(_EVICTION_REASONS):
            self._evictions.labels(reason=reason)
        for result in ("success", "failure"):
            self._prefetches.labels(result=result)
        for result, layout in _SIGNATURE_SERIES:
            self._signature_checks.labels(result=result, layout=layout)
        for reason in _REJECTION_REASONS:
            self._rejections.labels(reason=reason)

        self._state = _StateCollector()
        self.registry.register(
            _WithoutCreated(
                [
                    self._operations,
                    self._operation_seconds,
                    self._pulls,
                    self._pull_seconds,
                    self._pull_bytes,
                    self._cache_lookups,
                    self._evictions,
                    self._freed_bytes,
                    self._prefetches,
                    self._mirror_up,
                    self._signature_checks,
                    self._rejections,
                    build_info,
                ]
            )
        )
        self.registry.register(self._state)
        self._catalog = _CatalogCollector()
        self.registry.register(self._catalog)

    def observe_signature_check(self, result: str, layout: str) -> None:
        """Count one signature check (labels are the few fixed words of the module doc)."""
        self._signature_checks.labels(result=result, layout=layout).inc()

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one CSI call.

        ``method`` is the CSI method name or the full gRPC path
        (``/csi.v1.Node/NodePublishVolume``); ``code`` a gRPC code name in any case
        (``OK``, ``not_found``).  An unknown code is a bug and raises ValueError.
        """
        name = method.rsplit("/", 1)[-1]
        if name not in _CSI_METHODS:
            name = _OTHER_METHOD
        code_name = code.upper()
        if code_name not in _GRPC_CODES:
            raise ValueError(f"metrics: {code!r} is not a gRPC status code name")
        self._operations.labels(method=name, code=code_name).inc()
        self._operation_seconds.labels(method=name).observe(max(seconds, 0.0))

    def observe_pull(self, result: str, seconds: float, size_bytes: int) -> None:
        """Count one finished pull.

        ``result`` is ``success`` or the failing gRPC code name (any case);
        ``size_bytes`` (bytes downloaded) counts only for a success.
        An unknown result is a bug and raises ValueError.
        """
        name = result.lower()
        if name not in _PULL_RESULTS:
            raise ValueError(
                f"metrics: pull result {result!r} is neither 'success' nor a failing gRPC code"
            )
        self._pulls.labels(result=name).inc()
        self._pull_seconds.observe(max(seconds, 0.0))
        if name == "success" and size_bytes > 0:
            self._pull_bytes.inc(size_bytes)

    def observe_cache_lookup(self, hit: bool) -> None:
        """Count one cache lookup by digest."""
        self._cache_lookups.labels(result="hit" if hit else "miss").inc()

    def observe_prefetch(self, ok: bool) -> None:
        """Count one prefetch attempt of a listed module."""
        self._prefetches.labels(result="success" if ok else "failure").inc()

    def set_mirror_up(self, mirror: str, up: bool) -> None:
        """Whether a configured mirror host is used (1) or marked down (0)."""
        self._mirror_up.labels(mirror=mirror).set(1 if up else 0)

    def observe_eviction(self, reason: str, size_bytes: int) -> None:
        """Count one module evicted by garbage collection.

        ``reason`` is ``ttl``, ``size`` or ``disk``; anything else is a bug and raises
        ValueError.
        """
        if reason not in _EVICTION_REASONS:
            raise ValueError(f"metrics: eviction reason {reason!r} is not one of ttl, size, disk")
        self._evictions.labels(reason=reason).inc()
        if size_bytes > 0:
            self._freed_bytes.inc(size_bytes)

    def observe_rejection(self, reason: str) -> None:
        """Count one module refused by validation; an unknown reason is a bug (ValueError)."""
        if reason not in _REJECTION_REASONS:
            raise ValueError(f"metrics: rejection reason {reason!r} is not one of the known")
        self._rejections.labels(reason=reason).inc()

    def set_state_source(self, source: Callable[[], StateSnapshot]) -> None:
        """Compute the state gauges from ``source()`` at every scrape (it must be quick)."""
        self._state.source = source

    def set_catalog_source(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Report ``csi_wasm_catalog_entries{state}`` from ``source()`` (state -> count)."""
        self._catalog.source = source


# --- HTTP server ---------------------------------------------------------------------------

_FLAG: Final = "--metrics-address"
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_REQUEST_TIMEOUT_SECONDS: Final = 10.0
_POLL_INTERVAL_SECONDS: Final = 0.1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[Any, ...],
        dual_stack: bool,
        metrics: Metrics,
        ready: Callable[[], bool],
    ) -> None:
        self.address_family = family
        self.dual_stack = dual_stack
        self.metrics = metrics
        self.ready = ready
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would resolve our own FQDN (a DNS lookup); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = host
        self.server_port = port

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is not worth a traceback on stderr.
        _log.debug("metrics: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = "csi-wasm"
    sys_version = ""
    timeout = _REQUEST_TIMEOUT_SECONDS

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("metrics http: " + format, *args)

    def _answer(self, *, with_body: bool) -> None:
        server = cast(_Server, self.server)
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                payload = generate_latest(server.metrics.registry)
            except Exception:
                _log.exception("metrics: collecting metrics failed")
                self._send(500, b"collecting metrics failed\n", with_body=with_body)
                return
            self._send(200, payload, with_body=with_body, content_type=CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok", with_body=with_body)
        elif path == "/readyz":
            try:
                ready = server.ready()
            except Exception:
                _log.exception("metrics: readiness check failed")
                self._send(503, b"not ready: readiness check failed\n", with_body=with_body)
                return
            if ready:
                self._send(200, b"ok", with_body=with_body)
            else:
                self._send(503, b"not ready: --root cannot be written\n", with_body=with_body)
        else:
            self._send(404, b"not found; try /metrics, /healthz or /readyz\n", with_body=with_body)

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        with_body: bool,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)


class MetricsServer:
    """A running metrics HTTP server; :meth:`stop` closes its port."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.socket.getsockname()[:2]
        self._address: tuple[str, int] = (str(host), int(port))
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_SECONDS},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually bound (the port chosen when 0 was asked for)."""
        return self._address

    def stop(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` into host ("" for all) and port."""
    usage = f"{_FLAG} {address!r}: expected HOST:PORT, :PORT or [IPV6]:PORT, e.g. :9090"
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(usage)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(usage)
    elif ":" in host:
        raise ValueError(f"{_FLAG} {address!r}: an IPv6 address goes in brackets, e.g. [::]:9090")
    if "[" in host or "]" in host or any(c.isspace() for c in host):
        raise ValueError(usage)
    if not _PORT_RE.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"{_FLAG} {address!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def _bind(
    address: str, host: str, port: int, metrics: Metrics, ready: Callable[[], bool]
) -> _Server:
    if not host:
        # All interfaces: IPv6 and IPv4 on one socket where the node has IPv6.
        if socket.has_ipv6:
            try:
                return _Server(socket.AF_INET6, ("::", port), True, metrics, ready)
            except OSError as exc:
                if exc.errno not in (
                    errno.EAFNOSUPPORT,
                    errno.EADDRNOTAVAIL,
                    errno.EPROTONOSUPPORT,
                ):
                    raise
        return _Server(socket.AF_INET, ("0.0.0.0", port), False, metrics, ready)  # noqa: S104
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except (OSError, UnicodeError, ValueError) as exc:
        raise ValueError(f"{_FLAG} {address!r}: cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    return _Server(family, sockaddr, False, metrics, ready)


def serve_metrics(address: str, metrics: Metrics, ready: Callable[[], bool]) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``address`` in daemon threads.

    ``address`` is ``:PORT`` (all interfaces, IPv6 and IPv4), ``HOST:PORT`` or
    ``[IPV6]:PORT``; port 0 picks a free port (see :attr:`MetricsServer.address`).
    Raises ValueError for an address that does not parse or resolve, and OSError (naming
    ``--metrics-address``) when the port cannot be bound.
    """
    host, port = _split_address(address)
    try:
        server = _bind(address, host, port, metrics, ready)
    except OSError as exc:
        raise OSError(exc.errno, f"{_FLAG} {address!r}: cannot listen: {exc.strerror}") from exc
    return MetricsServer(server)
