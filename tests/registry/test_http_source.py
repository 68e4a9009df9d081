"""Tests of csi_wasm.registry.http_source: modules downloaded from a plain URL."""

from __future__ import annotations

import gzip
import io
import logging
import socket
import time
from collections.abc import Callable

import pytest

from csi_wasm.deadline import Deadline
from csi_wasm.errors import (
    CsiWasmError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from csi_wasm.registry import HttpSourceClient, RegistryClient, display_url

from .conftest import ClientFactory, Sleeps
from .fake_registry import (
    FakeServer,
    Handler,
    TlsFiles,
    chunked,
    close_delimited,
    redirect,
    reply,
    trickle,
    truncated,
)

MODULE = b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 40
PATH = "/modules/filter.wasm"
SECRET = "X-Amz-Signature=s3cr3t-token"
LIMIT = 1 << 20

SourceFactory = Callable[..., HttpSourceClient]


@pytest.fixture
def make_source(make_client: ClientFactory) -> SourceFactory:
    """Sources built the way the puller builds them: from a registry client."""

    def factory(*insecure: str, **options: object) -> HttpSourceClient:
        return HttpSourceClient.from_registry_client(make_client(*insecure, **options))

    return factory


@pytest.fixture
def source(fake: FakeServer, storage: FakeServer, make_source: SourceFactory) -> HttpSourceClient:
    return make_source(fake.host, storage.host)


def fetch(
    source: HttpSourceClient,
    url: str,
    *,
    limit: int = LIMIT,
    seconds: float = 30,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    dest = io.BytesIO()
    written = source.fetch(url, dest, Deadline.after(seconds), limit=limit, progress=progress)
    assert written == len(dest.getvalue())
    return dest.getvalue()


def fetch_error(source: HttpSourceClient, url: str, **kwargs: object) -> CsiWasmError:
    with pytest.raises(CsiWasmError) as caught:
        fetch(source, url, **kwargs)  # type: ignore[arg-type]
    return caught.value


# -- success -----------------------------------------------------------------------


def test_fetch_over_http_from_an_insecure_host(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, reply(MODULE))
    totals: list[int] = []
    assert fetch(source, f"{fake.url}{PATH}?{SECRET}", progress=totals.append) == MODULE
    assert totals[-1] == len(MODULE)
    assert totals == sorted(totals)
    [request] = fake.requests_to(PATH)
    assert request.headers["accept-encoding"] == "identity"
    assert request.authorization is None
    assert request.query == {"X-Amz-Signature": ["s3cr3t-token"]}


def test_scheme_and_host_are_case_insensitive(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, reply(MODULE))
    assert fetch(source, f"HTTP://{fake.host.upper()}{PATH}") == MODULE


def test_a_bare_insecure_host_covers_every_port(
    fake: FakeServer, make_source: SourceFactory
) -> None:
    fake.route(PATH, reply(MODULE))
    assert fetch(make_source("127.0.0.1"), f"{fake.url}{PATH}") == MODULE


def test_compressed_body_is_written_as_sent(fake: FakeServer, source: HttpSourceClient) -> None:
    packed = gzip.compress(MODULE)
    fake.route(PATH, reply(packed, headers={"Content-Encoding": "gzip"}))
    assert fetch(source, f"{fake.url}{PATH}") == packed


def test_body_without_content_length(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, close_delimited(MODULE))
    assert fetch(source, f"{fake.url}{PATH}") == MODULE


def test_chunked_body_within_the_limit(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, chunked(MODULE, piece=1000))
    assert fetch(source, f"{fake.url}{PATH}", limit=len(MODULE)) == MODULE


def test_empty_body(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, reply(b""))
    assert fetch(source, f"{fake.url}{PATH}") == b""


def test_builds_from_a_registry_client_sharing_its_session(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    fake.route(PATH, reply(MODULE))
    client: RegistryClient = make_client(fake.host)
    source = HttpSourceClient.from_registry_client(client)
    assert source._transport is client._transport
    assert fetch(source, f"{fake.url}{PATH}") == MODULE


# -- schemes and URLs ----------------------------------------------------------------


def test_http_is_refused_for_a_host_not_listed(
    fake: FakeServer, make_source: SourceFactory
) -> None:
    fake.route(PATH, reply(MODULE))
    error = fetch_error(make_source("other.example"), f"{fake.url}{PATH}?{SECRET}")
    assert isinstance(error, InvalidArgument)
    assert "http:// is only allowed for hosts given with --insecure-registry" in str(error)
    assert "use https" in str(error)
    assert fake.host in str(error)
    assert fake.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/filter.wasm",
        "file:///var/lib/filter.wasm",
        "oci://ghcr.io/acme/filter:v1",
        "ghcr.io/acme/filter:v1",
        "data:application/wasm;base64,AGFzbQ==",
    ],
)
def test_other_schemes_are_refused(source: HttpSourceClient, url: str) -> None:
    error = fetch_error(source, url)
    assert isinstance(error, InvalidArgument)
    assert "https://" in str(error)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://", "has no host"),
        ("https://example.com:port/filter.wasm", "not a valid URL"),
        ("https://[::1/filter.wasm", "not a valid URL"),
        ("https://example.com/a filter.wasm", "spaces or control characters"),
        ("https://example.com/filter.wasm\r\nX-Evil: 1", "spaces or control characters"),
    ],
)
def test_malformed_urls_are_refused(source: HttpSourceClient, url: str, expected: str) -> None:
    error = fetch_error(source, url)
    assert isinstance(error, InvalidArgument)
    assert expected in str(error)


def test_credentials_in_the_url_are_refused_and_not_echoed(
    fake: FakeServer, source: HttpSourceClient
) -> None:
    fake.route(PATH, reply(MODULE))
    error = fetch_error(source, f"http://alice:hunter2@{fake.host}{PATH}")
    assert isinstance(error, InvalidArgument)
    assert "credentials are not supported" in str(error)
    assert "hunter2" not in str(error)
    assert "alice" not in str(error)
    assert fake.requests == []


def test_display_url_drops_user_info_query_and_fragment() -> None:
    assert display_url("HTTPS://u:p@Example.COM:8443/a/b.wasm?sig=1#frag") == (
        "https://example.com:8443/a/b.wasm"
    )
    assert display_url("https://example.com") == "https://example.com/"
    long = display_url("https://example.com/" + "a" * 500)
    assert len(long) < 200
    assert long.endswith("...")


# -- TLS and redirects ---------------------------------------------------------------


def test_https_with_the_registry_ca(
    tls_fake: FakeServer, tls_files: TlsFiles, make_source: SourceFactory
) -> None:
    tls_fake.route(PATH, reply(MODULE))
    source = make_source(ca_file=tls_files.cert)
    assert fetch(source, f"{tls_fake.url}{PATH}") == MODULE


def test_https_without_the_ca_fails_verification(
    tls_fake: FakeServer, make_source: SourceFactory, sleeps: Sleeps
) -> None:
    tls_fake.route(PATH, reply(MODULE))
    error = fetch_error(make_source(), f"{tls_fake.url}{PATH}?{SECRET}")
    assert isinstance(error, Unavailable)
    message = str(error)
    assert "TLS certificate verification failed" in message
    assert "--registry-ca" in message
    assert tls_fake.host in message
    assert SECRET not in message
    assert sleeps.calls == []


def test_redirect_from_https_to_http_is_refused(
    tls_fake: FakeServer, fake: FakeServer, tls_files: TlsFiles, make_source: SourceFactory
) -> None:
    tls_fake.route(PATH, redirect(f"{fake.url}/elsewhere.wasm?{SECRET}"))
    fake.route("/elsewhere.wasm", reply(MODULE))
    # Even with the http host listed as insecure: a downgrade is never followed.
    source = make_source(fake.host, ca_file=tls_files.cert)
    error = fetch_error(source, f"{tls_fake.url}{PATH}")
    assert isinstance(error, FailedPrecondition)
    assert "from https to plain http" in str(error)
    assert SECRET not in str(error)
    assert fake.requests == []


def test_cross_host_redirect_is_followed(
    fake: FakeServer, storage: FakeServer, source: HttpSourceClient
) -> None:
    fake.route(PATH, redirect(f"{storage.url}/bucket/filter.wasm?{SECRET}"))
    storage.route("/bucket/filter.wasm", reply(MODULE))
    assert fetch(source, f"{fake.url}{PATH}") == MODULE
    [request] = storage.requests_to("/bucket/filter.wasm")
    assert request.authorization is None
    assert request.headers["accept-encoding"] == "identity"


# -- statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
def test_not_found(fake: FakeServer, source: HttpSourceClient, status: int) -> None:
    fake.route(PATH, reply(b"gone", status))
    error = fetch_error(source, f"{fake.url}{PATH}")
    assert isinstance(error, NotFound)
    assert f"HTTP {status}" in str(error)
    assert f"{fake.url}{PATH}" in str(error)


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_required_is_permission_denied(
    fake: FakeServer, source: HttpSourceClient, sleeps: Sleeps, status: int
) -> None:
    fake.route(PATH, reply(b"", status, {"WWW-Authenticate": 'Basic realm="x"'}))
    error = fetch_error(source, f"{fake.url}{PATH}")
    assert isinstance(error, PermissionDenied)
    message = str(error)
    assert "https sources with credentials are not supported" in message
    assert "nodePublishSecretRef" in message
    assert len(fake.requests) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("status", [400, 405, 416, 451])
def test_other_4xx_is_failed_precondition(
    fake: FakeServer, source: HttpSourceClient, status: int
) -> None:
    fake.route(PATH, reply(b"", status))
    error = fetch_error(source, f"{fake.url}{PATH}")
    assert isinstance(error, FailedPrecondition)
    assert f"HTTP {status}" in str(error)
    assert len(fake.requests) == 1


def test_other_2xx_is_not_a_module(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, reply(b"", 204))
    assert isinstance(fetch_error(source, f"{fake.url}{PATH}"), FailedPrecondition)


def test_5xx_burst_then_success(fake: FakeServer, source: HttpSourceClient, sleeps: Sleeps) -> None:
    fake.sequence(PATH, reply(b"", 500), reply(b"", 503), reply(MODULE))
    assert fetch(source, f"{fake.url}{PATH}") == MODULE
    assert len(fake.requests_to(PATH)) == 3
    assert len(sleeps.calls) == 2


def test_5xx_after_every_retry_is_unavailable_naming_the_host(
    fake: FakeServer, make_source: SourceFactory, sleeps: Sleeps
) -> None:
    fake.route(PATH, reply(b"", 502))
    source = make_source(fake.host, max_retries=2)
    error = fetch_error(source, f"{fake.url}{PATH}?{SECRET}")
    assert isinstance(error, Unavailable)
    assert fake.host in str(error)
    assert "HTTP 502" in str(error)
    assert SECRET not in str(error)
    assert len(fake.requests_to(PATH)) == 3
    assert len(sleeps.calls) == 2


def test_429_waits_for_retry_after(
    fake: FakeServer, source: HttpSourceClient, sleeps: Sleeps
) -> None:
    fake.sequence(PATH, reply(b"", 429, {"Retry-After": "2"}), reply(MODULE))
    assert fetch(source, f"{fake.url}{PATH}") == MODULE
    assert sleeps.calls == [2.0]


def test_connection_refused_is_unavailable_naming_the_host(
    make_source: SourceFactory, sleeps: Sleeps
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    source = make_source(host, max_retries=1)
    error = fetch_error(source, f"http://{host}{PATH}?{SECRET}")
    assert isinstance(error, Unavailable)
    assert host in str(error)
    assert "connection refused" in str(error)
    assert SECRET not in str(error)
    assert len(sleeps.calls) == 1


# -- size, truncation and time -------------------------------------------------------


def test_content_length_over_the_limit_is_refused_before_reading(
    fake: FakeServer, source: HttpSourceClient
) -> None:
    fake.route(PATH, reply(MODULE))
    dest = io.BytesIO()
    with pytest.raises(FailedPrecondition) as caught:
        source.fetch(f"{fake.url}{PATH}", dest, Deadline.after(30), limit=len(MODULE) - 1)
    assert "larger than --max-module-bytes" in str(caught.value)
    assert str(len(MODULE)) in str(caught.value)
    assert dest.getvalue() == b""


@pytest.mark.parametrize(
    "handler", [chunked(MODULE, piece=1000), close_delimited(MODULE)], ids=["chunked", "close"]
)
def test_body_over_the_limit_without_content_length(
    fake: FakeServer, source: HttpSourceClient, handler: Handler
) -> None:
    fake.route(PATH, handler)
    dest = io.BytesIO()
    limit = len(MODULE) - 1
    with pytest.raises(FailedPrecondition) as caught:
        source.fetch(f"{fake.url}{PATH}", dest, Deadline.after(30), limit=limit)
    assert "larger than --max-module-bytes" in str(caught.value)
    assert len(dest.getvalue()) <= limit


def test_truncated_body_is_unavailable(fake: FakeServer, source: HttpSourceClient) -> None:
    fake.route(PATH, truncated(MODULE[:100], declared=len(MODULE)))
    error = fetch_error(source, f"{fake.url}{PATH}?{SECRET}")
    assert isinstance(error, Unavailable)
    assert "truncated" in str(error)
    assert "kubelet will retry" in str(error)
    assert SECRET not in str(error)


def test_trickle_is_cut_off_by_the_deadline(fake: FakeServer, make_source: SourceFactory) -> None:
    fake.route(PATH, trickle(b"\x00asm", declared=1 << 20, interval=0.01))
    source = make_source(fake.host, read_timeout=30)
    started = time.monotonic()
    error = fetch_error(source, f"{fake.url}{PATH}?{SECRET}", seconds=0.5)
    elapsed = time.monotonic() - started
    assert isinstance(error, DeadlineExceeded)
    assert 0.4 < elapsed < 3, elapsed
    assert "--pull-timeout" in str(error)
    assert SECRET not in str(error)


# -- secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (reply(b"", 404), NotFound),
        (reply(b"", 403), PermissionDenied),
        (reply(b"", 400), FailedPrecondition),
        (reply(b"", 500), Unavailable),
        (reply(b"", 429, {"Retry-After": "3600"}), Unavailable),
        (truncated(b"\x00asm", declared=100), Unavailable),
        (reply(MODULE), FailedPrecondition),  # over the limit below
    ],
)
def test_the_query_string_never_appears_in_messages_or_logs(
    fake: FakeServer,
    source: HttpSourceClient,
    caplog: pytest.LogCaptureFixture,
    handler: Handler,
    expected: type[CsiWasmError],
) -> None:
    fake.route(PATH, handler)
    with caplog.at_level(logging.DEBUG, logger="csi_wasm"):
        error = fetch_error(source, f"{fake.url}{PATH}?{SECRET}#frag", limit=len(MODULE) - 1)
    assert isinstance(error, expected)
    message = str(error)
    assert "s3cr3t" not in message
    assert "X-Amz" not in message
    assert "frag" not in message
    assert "\n" not in message
    assert f"{fake.url}{PATH}" in message or fake.host in message
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("csi_wasm")]
    assert not any("s3cr3t" in line for line in ours)
