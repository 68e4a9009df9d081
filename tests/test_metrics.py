"""Metrics and the metrics HTTP server, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import platform
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import prometheus_client
import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

import csi_wasm
from csi_wasm.metrics import Metrics, MetricsServer, StateSnapshot, serve_metrics
from csi_wasm.verify import REASONS

Labels = frozenset[tuple[str, str]]


@dataclass
class Served:
    metrics: Metrics
    server: MetricsServer
    ready: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        host, port = self.server.address
        return f"http://{host}:{port}{path}"


@pytest.fixture
def served() -> Iterator[Served]:
    metrics = Metrics()
    ready = threading.Event()
    server = serve_metrics("127.0.0.1:0", metrics, ready.is_set)
    try:
        yield Served(metrics, server, ready)
    finally:
        server.stop()


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: str


def get(url: str, method: str = "GET") -> Response:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return Response(answer.status, answer.headers["Content-Type"], answer.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers["Content-Type"], error.read().decode())


def scrape(served: Served) -> dict[str, Metric]:
    answer = get(served.url("/metrics"))
    assert answer.status == 200
    return {family.name: family for family in text_string_to_metric_families(answer.body)}


def samples(family: Metric) -> dict[tuple[str, Labels], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}


def labels(**values: str) -> Labels:
    return frozenset(values.items())


# --- exposed values --------------------------------------------------------------------------


def test_rpc_counts_and_durations(served: Served) -> None:
    m = served.metrics
    m.observe_rpc("NodePublishVolume", "OK", 0.002)
    m.observe_rpc("/csi.v1.Node/NodePublishVolume", "ok", 0.2)
    m.observe_rpc("NodePublishVolume", "NOT_FOUND", 0.0003)
    m.observe_rpc("Probe", "OK", 0.0001)

    families = scrape(served)

    operations = families["csi_wasm_operations"]
    assert operations.type == "counter"
    assert samples(operations) == {
        ("csi_wasm_operations_total", labels(method="NodePublishVolume", code="OK")): 2.0,
        ("csi_wasm_operations_total", labels(method="NodePublishVolume", code="NOT_FOUND")): 1.0,
        ("csi_wasm_operations_total", labels(method="Probe", code="OK")): 1.0,
    }
    durations = samples(families["csi_wasm_operation_duration_seconds"])
    publish = labels(method="NodePublishVolume")
    assert durations[("csi_wasm_operation_duration_seconds_count", publish)] == 3.0
    assert durations[("csi_wasm_operation_duration_seconds_sum", publish)] == pytest.approx(0.2023)
    bucket = "csi_wasm_operation_duration_seconds_bucket"
    assert durations[(bucket, publish | {("le", "0.0005")})] == 1.0
    assert durations[(bucket, publish | {("le", "0.0025")})] == 2.0
    assert durations[(bucket, publish | {("le", "0.1")})] == 2.0
    assert durations[(bucket, publish | {("le", "0.25")})] == 3.0
    assert durations[(bucket, publish | {("le", "+Inf")})] == 3.0
    assert durations[(bucket, labels(method="Probe", le="0.0005"))] == 1.0


def test_unknown_method_is_counted_as_other(served: Served) -> None:
    served.metrics.observe_rpc("/evil.Service/Method-42", "UNIMPLEMENTED", 0.001)
    served.metrics.observe_rpc("/csi.v1.Controller/CreateVolume", "UNIMPLEMENTED", 0.001)

    assert samples(scrape(served)["csi_wasm_operations"]) == {
        ("csi_wasm_operations_total", labels(method="other", code="UNIMPLEMENTED")): 2.0,
    }


def test_pull_counts_duration_and_bytes(served: Served) -> None:
    m = served.metrics
    m.observe_pull("success", 1.5, 1000)
    m.observe_pull("success", 0.005, 24)
    m.observe_pull("NOT_FOUND", 0.3, 512)  # bytes of a failed pull are not counted
    m.observe_pull("unavailable", 700.0, 0)

    families = scrape(served)

    assert samples(families["csi_wasm_pulls"]) == {
        ("csi_wasm_pulls_total", labels(result="success")): 2.0,
        ("csi_wasm_pulls_total", labels(result="not_found")): 1.0,
        ("csi_wasm_pulls_total", labels(result="unavailable")): 1.0,
    }
    assert samples(families["csi_wasm_pull_bytes"]) == {
        ("csi_wasm_pull_bytes_total", labels()): 1024.0,
    }
    durations = samples(families["csi_wasm_pull_duration_seconds"])
    bucket = "csi_wasm_pull_duration_seconds_bucket"
    assert durations[(bucket, labels(le="0.01"))] == 1.0
    assert durations[(bucket, labels(le="0.5"))] == 2.0
    assert durations[(bucket, labels(le="2.5"))] == 3.0
    assert durations[(bucket, labels(le="600.0"))] == 3.0
    assert durations[(bucket, labels(le="+Inf"))] == 4.0
    assert durations[("csi_wasm_pull_duration_seconds_count", labels())] == 4.0
    assert durations[("csi_wasm_pull_duration_seconds_sum", labels())] == pytest.approx(701.805)


def test_cache_lookups_start_at_zero(served: Served) -> None:
    lookups = "csi_wasm_cache_lookups"
    assert samples(scrape(served)[lookups]) == {
        ("csi_wasm_cache_lookups_total", labels(result="hit")): 0.0,
        ("csi_wasm_cache_lookups_total", labels(result="miss")): 0.0,
    }
    served.metrics.observe_cache_lookup(hit=True)
    served.metrics.observe_cache_lookup(hit=False)
    served.metrics.observe_cache_lookup(hit=True)

    assert samples(scrape(served)[lookups]) == {
        ("csi_wasm_cache_lookups_total", labels(result="hit")): 2.0,
        ("csi_wasm_cache_lookups_total", labels(result="miss")): 1.0,
    }


def test_gc_evictions_and_freed_bytes(served: Served) -> None:
    families = scrape(served)
    assert samples(families["csi_wasm_gc_evictions"]) == {
        ("csi_wasm_gc_evictions_total", labels(reason=reason)): 0.0
        for reason in ("disk", "size", "ttl")
    }
    served.metrics.observe_eviction("ttl", 100)
    served.metrics.observe_eviction("size", 20)
    served.metrics.observe_eviction("ttl", 3)

    families = scrape(served)
    evictions = samples(families["csi_wasm_gc_evictions"])
    assert evictions[("csi_wasm_gc_evictions_total", labels(reason="ttl"))] == 2.0
    assert evictions[("csi_wasm_gc_evictions_total", labels(reason="size"))] == 1.0
    assert samples(families["csi_wasm_gc_freed_bytes"]) == {
        ("csi_wasm_gc_freed_bytes_total", labels()): 123.0
    }


def test_build_info(served: Served) -> None:
    info = scrape(served)["csi_wasm_build_info"]
    assert info.type == "gauge"
    assert samples(info) == {
        (
            "csi_wasm_build_info",
            labels(version=csi_wasm.__version__, python=platform.python_version()),
        ): 1.0,
    }


STATE_GAUGES = (
    "csi_wasm_cache_bytes",
    "csi_wasm_cache_modules",
    "csi_wasm_published_volumes",
    "csi_wasm_pulls_in_flight",
)


def state_values(families: dict[str, Metric]) -> dict[str, float]:
    values: dict[str, float] = {}
    for name in STATE_GAUGES:
        if name in families:
            assert families[name].type == "gauge"
            assert samples(families[name]).keys() == {(name, labels())}
            values[name] = families[name].samples[0].value
    return values


def test_state_gauges_are_computed_at_scrape_time(served: Served) -> None:
    assert state_values(scrape(served)) == {}  # no source yet

    calls = 0

    def source() -> StateSnapshot:
        nonlocal calls
        calls += 1
        return StateSnapshot(
            cache_bytes=4096 * calls,
            cache_modules=3,
            published_volumes=7,
            pulls_in_flight=calls - 1,
        )

    served.metrics.set_state_source(source)
    assert calls == 0
    assert state_values(scrape(served)) == {
        "csi_wasm_cache_bytes": 4096.0,
        "csi_wasm_cache_modules": 3.0,
        "csi_wasm_published_volumes": 7.0,
        "csi_wasm_pulls_in_flight": 0.0,
    }
    assert state_values(scrape(served)) == {
        "csi_wasm_cache_bytes": 8192.0,
        "csi_wasm_cache_modules": 3.0,
        "csi_wasm_published_volumes": 7.0,
        "csi_wasm_pulls_in_flight": 1.0,
    }


def test_failing_state_source_leaves_only_its_gauges_out(served: Served) -> None:
    def source() -> StateSnapshot:
        raise OSError("cache directory vanished")

    served.metrics.set_state_source(source)
    served.metrics.observe_cache_lookup(hit=False)

    families = scrape(served)
    assert state_values(families) == {}
    assert (
        samples(families["csi_wasm_cache_lookups"])[
            ("csi_wasm_cache_lookups_total", labels(result="miss"))
        ]
        == 1.0
    )


def test_catalog_entries_by_state_at_scrape_time(served: Served) -> None:
    assert "csi_wasm_catalog_entries" not in scrape(served)  # no catalog yet
    counts = {"ready": 2, "pending": 0, "failed": 1}
    served.metrics.set_catalog_source(lambda: counts)

    family = scrape(served)["csi_wasm_catalog_entries"]

    assert family.type == "gauge"
    assert samples(family) == {
        ("csi_wasm_catalog_entries", labels(state="ready")): 2.0,
        ("csi_wasm_catalog_entries", labels(state="pending")): 0.0,
        ("csi_wasm_catalog_entries", labels(state="failed")): 1.0,
    }


# --- naming rules (CONTRACT.md section 6) ------------------------------------------------------

GROWING_LABELS = {"volume", "volume_id", "pod", "pod_name", "namespace", "reference", "digest"}


def test_every_exposed_name_follows_the_contract(served: Served) -> None:
    m = served.metrics
    m.observe_rpc("NodePublishVolume", "OK", 0.01)
    m.observe_pull("success", 1.0, 10)
    m.observe_pull("internal", 1.0, 0)
    m.observe_cache_lookup(hit=True)
    m.set_mirror_up("mirror.example:5000", False)
    m.observe_signature_check("verified", "bundle")
    m.set_state_source(lambda: StateSnapshot(1, 1, 1, 1))

    body = get(served.url("/metrics")).body
    families = list(text_string_to_metric_families(body))

    assert {f.name for f in families} == {
        "csi_wasm_operations",
        "csi_wasm_operation_duration_seconds",
        "csi_wasm_pulls",
        "csi_wasm_pull_duration_seconds",
        "csi_wasm_pull_bytes",
        "csi_wasm_cache_lookups",
        "csi_wasm_gc_evictions",
        "csi_wasm_gc_freed_bytes",
        "csi_wasm_prefetch_attempts",
        "csi_wasm_module_rejections",
        "csi_wasm_mirror_up",
        "csi_wasm_signature_verifications",
        "csi_wasm_build_info",
        *STATE_GAUGES,
    }
    for family in families:
        assert family.name.startswith("csi_wasm_"), family.name
        assert family.type in {"counter", "gauge", "histogram"}, family.name
        if family.type == "counter":
            assert f"# TYPE {family.name}_total counter\n" in body
            assert all(s.name == family.name + "_total" for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert not sample.name.endswith("_created"), sample.name
            assert not GROWING_LABELS & sample.labels.keys(), sample
    assert "_created" not in body


# --- HTTP endpoints ----------------------------------------------------------------------------


def test_metrics_content_type_and_query_string(served: Served) -> None:
    answer = get(served.url("/metrics?debug=1"))
    assert answer.status == 200
    assert answer.content_type == CONTENT_TYPE_LATEST
    assert "# TYPE csi_wasm_build_info gauge" in answer.body

    head = get(served.url("/metrics"), method="HEAD")
    assert (head.status, head.body) == (200, "")


def test_healthz(served: Served) -> None:
    assert get(served.url("/healthz")) == Response(200, "text/plain; charset=utf-8", "ok")


def test_readyz_follows_ready(served: Served) -> None:
    not_ready = get(served.url("/readyz"))
    assert not_ready.status == 503
    assert not_ready.body.startswith("not ready")

    served.ready.set()
    assert get(served.url("/readyz")) == Response(200, "text/plain; charset=utf-8", "ok")

    served.ready.clear()
    assert get(served.url("/readyz")).status == 503


def test_readyz_is_503_when_ready_raises() -> None:
    def ready() -> bool:
        raise RuntimeError("boom")

    server = serve_metrics("127.0.0.1:0", Metrics(), ready)
    try:
        host, port = server.address
        answer = get(f"http://{host}:{port}/readyz")
    finally:
        server.stop()
    assert answer.status == 503
    assert answer.body.startswith("not ready")


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/", "/healthz/x", "/readyz.json"])
def test_other_paths_are_404(served: Served, path: str) -> None:
    assert get(served.url(path)).status == 404


def test_requests_are_not_logged_to_stderr(
    served: Served, capfd: pytest.CaptureFixture[str]
) -> None:
    for path in ("/metrics", "/healthz", "/readyz", "/nope"):
        get(served.url(path))
    assert capfd.readouterr().err == ""


# --- addresses and lifecycle -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "",
        "9090",
        "localhost",
        ":",
        ":http",
        ":-1",
        ":65536",
        ":99999",
        ": 9090",
        "127.0.0.1:90a",
        "::1:9090",
        "::9090",
        "[]:9090",
        "[::1:9090",
        "[::1]9090",
        "bad host:9090",
        "nul\x00:9090",
    ],
)
def test_bad_address_raises_value_error(address: str) -> None:
    with pytest.raises(ValueError, match="--metrics-address"):
        serve_metrics(address, Metrics(), lambda: True)


def start(address: str) -> MetricsServer:
    return serve_metrics(address, Metrics(), lambda: True)


def healthz(host: str, port: int) -> int:
    if ":" in host:
        host = f"[{host}]"
    return get(f"http://{host}:{port}/healthz").status


def test_port_zero_picks_a_port() -> None:
    server = start("127.0.0.1:0")
    try:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port > 0
        assert healthz(host, port) == 200
    finally:
        server.stop()


def test_empty_host_listens_on_all_interfaces() -> None:
    server = start(":0")
    try:
        host, port = server.address
        assert host in {"::", "0.0.0.0"}
        assert healthz("127.0.0.1", port) == 200
    finally:
        server.stop()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_bracketed_ipv6_address() -> None:
    server = start("[::1]:0")
    try:
        host, port = server.address
        assert host == "::1"
        assert healthz(host, port) == 200
    finally:
        server.stop()


def test_stop_releases_the_port() -> None:
    server = start("127.0.0.1:0")
    host, port = server.address
    assert healthz(host, port) == 200
    server.stop()
    server.stop()  # a second stop is harmless

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()
    again = start(f"127.0.0.1:{port}")
    try:
        assert again.address == (host, port)
        assert healthz(host, port) == 200
    finally:
        again.stop()


def test_port_in_use_names_the_flag() -> None:
    server = start("127.0.0.1:0")
    try:
        _, port = server.address
        with pytest.raises(OSError, match="--metrics-address") as raised:
            start(f"127.0.0.1:{port}")
        assert not isinstance(raised.value, ValueError)
    finally:
        server.stop()


# --- instances and validation ------------------------------------------------------------------


def test_instances_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.observe_cache_lookup(hit=True)
    first.observe_rpc("Probe", "OK", 0.001)

    def value(metrics: Metrics, name: str, **sample_labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, sample_labels)

    assert value(first, "csi_wasm_cache_lookups_total", result="hit") == 1.0
    assert value(second, "csi_wasm_cache_lookups_total", result="hit") == 0.0
    assert value(second, "csi_wasm_operations_total", method="Probe", code="OK") is None
    # Nothing lands in the library's global registry.
    assert prometheus_client.REGISTRY.get_sample_value("csi_wasm_build_info") is None


def test_given_registry_is_used_and_guards_against_doubles() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    metrics.observe_pull("success", 0.1, 5)
    assert registry.get_sample_value("csi_wasm_pull_bytes_total") == 5.0
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


def test_registration_does_not_call_the_state_source() -> None:
    def source() -> StateSnapshot:
        raise AssertionError("called outside a scrape")

    registry = prometheus_client.CollectorRegistry(auto_describe=True)
    Metrics(registry).set_state_source(source)


@pytest.mark.parametrize(
    "observe",
    [
        lambda m: m.observe_rpc("Probe", "NOPE", 0.1),
        lambda m: m.observe_rpc("Probe", "", 0.1),
        lambda m: m.observe_pull("ok", 0.1, 0),
        lambda m: m.observe_pull("sha256:abc", 0.1, 0),
        lambda m: m.observe_pull("", 0.1, 0),
        lambda m: m.observe_eviction("sha256:abc", 1),
    ],
)
def test_unbounded_label_values_are_refused(observe: Callable[[Metrics], None]) -> None:
    with pytest.raises(ValueError, match="metrics"):
        observe(Metrics())


def test_negative_durations_count_as_zero() -> None:
    metrics = Metrics()
    metrics.observe_rpc("Probe", "OK", -1.0)
    metrics.observe_pull("success", -1.0, -5)
    get_value = metrics.registry.get_sample_value
    assert get_value("csi_wasm_operation_duration_seconds_sum", {"method": "Probe"}) == 0.0
    assert get_value("csi_wasm_pull_duration_seconds_sum") == 0.0
    assert get_value("csi_wasm_pull_bytes_total") == 0.0


def test_prefetch_attempts_are_counted_by_result() -> None:
    m = Metrics()
    m.observe_prefetch(True)
    m.observe_prefetch(False)
    m.observe_prefetch(False)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())
    }
    assert {
        s.labels["result"]: s.value for s in families["csi_wasm_prefetch_attempts"].samples
    } == {"success": 1.0, "failure": 2.0}


def test_module_rejections_are_counted_by_bounded_reason() -> None:
    m = Metrics()
    m.observe_rejection("structure")
    m.observe_rejection("no_abi_export")
    m.observe_rejection("no_abi_export")
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())
    }
    counted = {
        s.labels["reason"]: s.value for s in families["csi_wasm_module_rejections"].samples
    }
    assert counted == {reason: 0.0 for reason in REASONS} | {
        "structure": 1.0,
        "no_abi_export": 2.0,
    }
    with pytest.raises(ValueError, match="rejection reason"):
        m.observe_rejection("sha256:" + "a" * 64)
