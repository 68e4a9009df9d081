"""Tests of csi_wasm.registry.transport: retries, backoff, 429, redirects, TLS, deadlines."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from csi_wasm import __version__
from csi_wasm.deadline import Deadline
from csi_wasm.errors import DeadlineExceeded, FailedPrecondition, HostUnavailable, Unavailable
from csi_wasm.registry import RegistryOptions
from csi_wasm.registry.transport import Transport, describe_failure, new_session

from .conftest import Sleeps
from .fake_registry import Exchange, FakeServer, TlsFiles, redirect, reply

SIGNATURE = "X-Amz-Signature=deadbeefsecret"


@pytest.fixture
def transport_for(sleeps: Sleeps) -> Iterator[TransportFactory]:
    made: list[Transport] = []

    def factory(*insecure: str, **options: object) -> Transport:
        opts = RegistryOptions(insecure_registries=frozenset(insecure), **options)  # type: ignore[arg-type]
        transport = Transport(opts, new_session(opts), sleep=sleeps, rng=random.Random(7))
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        transport.session.close()


class TransportFactory(Protocol):  # the fixture's type, for annotations
    def __call__(self, *insecure: str, **options: object) -> Transport: ...


def get(transport: Transport, url: str, seconds: float = 30, **kwargs: object) -> int:
    response = transport.send(
        "GET",
        url,
        deadline=Deadline.after(seconds),
        what="testing",
        **kwargs,  # type: ignore[arg-type]
    )
    response.close()
    return response.status_code


# -- addressing ---------------------------------------------------------------------


def test_scheme_and_api_host(transport_for: TransportFactory) -> None:
    transport = transport_for("insecure.example:5000", "bare.example")
    assert transport.base_url("docker.io") == "https://registry-1.docker.io"
    assert transport.base_url("ghcr.io") == "https://ghcr.io"
    assert transport.base_url("insecure.example:5000") == "http://insecure.example:5000"
    assert transport.base_url("insecure.example:5001") == "https://insecure.example:5001"
    assert transport.base_url("bare.example:1234") == "http://bare.example:1234"
    assert transport.base_url("bare.example") == "http://bare.example"
    assert transport_for("[::1]:5000").base_url("[::1]:5000") == "http://[::1]:5000"


def test_user_agent_and_no_netrc(
    fake: FakeServer,
    transport_for: TransportFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login nosy password leaked\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    fake.route("/v2/", reply(b"{}"))
    assert get(transport_for(fake.host), f"{fake.url}/v2/") == 200
    (request,) = fake.requests
    assert request.headers["user-agent"] == f"csi-wasm/{__version__}"
    assert request.authorization is None


# -- retries ------------------------------------------------------------------------


def test_5xx_is_retried_with_exponential_backoff(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.sequence("/x", reply(status=503), reply(status=502), reply(status=500), reply(b"ok"))
    assert get(transport_for(fake.host), f"{fake.url}/x") == 200
    assert len(fake.requests_to("/x")) == 4
    assert len(sleeps.calls) == 3
    for attempt, delay in enumerate(sleeps.calls):
        ceiling = 0.5 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling  # jittered in the upper half


def test_5xx_gives_up_after_max_retries(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.route("/x", reply(status=503))
    with pytest.raises(Unavailable) as caught:
        get(transport_for(fake.host), f"{fake.url}/x")
    message = str(caught.value)
    assert f"registry {fake.host} is unavailable" in message
    assert "HTTP 503" in message
    assert "after 4 attempts" in message
    assert len(fake.requests_to("/x")) == 4
    assert len(sleeps.calls) == 3


def test_max_retries_zero(fake: FakeServer, transport_for: TransportFactory) -> None:
    fake.route("/x", reply(status=500))
    with pytest.raises(Unavailable):
        get(transport_for(fake.host, max_retries=0), f"{fake.url}/x")
    assert len(fake.requests_to("/x")) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_4xx_is_returned_not_retried(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps, status: int
) -> None:
    fake.route("/x", reply(status=status))
    assert get(transport_for(fake.host), f"{fake.url}/x") == status
    assert len(fake.requests_to("/x")) == 1
    assert sleeps.calls == []


def test_connection_refused_is_retried_then_unavailable(
    transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = f"127.0.0.1:{port}"
    with pytest.raises(Unavailable) as caught:
        get(transport_for(host), f"http://{host}/v2/")
    assert f"{host}: connection refused" in str(caught.value)
    assert "after 4 attempts" in str(caught.value)
    assert len(sleeps.calls) == 3
    assert caught.value.__cause__ is not None


def _never_answer(exchange: Exchange) -> None:
    exchange.server.stopping.wait()


def test_read_timeout_is_retried(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.route("/x", _never_answer)
    with pytest.raises(Unavailable, match="timed out waiting for data"):
        get(transport_for(fake.host, read_timeout=0.1), f"{fake.url}/x")
    assert len(fake.requests_to("/x")) == 4


@pytest.mark.parametrize("fault", ["503", "silent"])
def test_a_mirror_gets_one_attempt_and_the_mirror_timeout(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps, fault: str
) -> None:
    fake.route("/x", reply(status=503) if fault == "503" else _never_answer)
    transport = transport_for(
        fake.host, mirror_hosts=frozenset({fake.host}), mirror_timeout=0.1, read_timeout=60
    )
    with pytest.raises(HostUnavailable) as caught:
        get(transport, f"{fake.url}/x")
    assert "(after 1 attempt)" in str(caught.value)
    assert len(fake.requests_to("/x")) == 1
    assert sleeps.calls == []


def test_read_timeout_is_clipped_to_the_deadline(
    fake: FakeServer, transport_for: TransportFactory
) -> None:
    fake.route("/x", _never_answer)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="raise --pull-timeout"):
        get(transport_for(fake.host, read_timeout=30), f"{fake.url}/x", seconds=0.3)
    assert time.monotonic() - started < 3


def test_backoff_that_does_not_fit_the_deadline(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.route("/x", reply(status=503))
    with pytest.raises(Unavailable, match="no time left in the pull to retry"):
        get(transport_for(fake.host), f"{fake.url}/x", seconds=0.2)
    assert sleeps.calls == []
    assert len(fake.requests_to("/x")) == 1


def test_expired_deadline_sends_nothing(fake: FakeServer, transport_for: TransportFactory) -> None:
    with pytest.raises(DeadlineExceeded):
        get(transport_for(fake.host), f"{fake.url}/x", seconds=0)
    assert fake.requests == []


# -- 429 ----------------------------------------------------------------------------


def test_429_honours_retry_after(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.sequence("/x", reply(status=429, headers={"Retry-After": "2"}), reply(b"ok"))
    assert get(transport_for(fake.host), f"{fake.url}/x") == 200
    assert sleeps.calls == [2.0]


def test_429_without_retry_after_backs_off(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.sequence(
        "/x",
        reply(status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        reply(b"ok"),
    )
    assert get(transport_for(fake.host), f"{fake.url}/x") == 200
    assert len(sleeps.calls) == 1 and 0.25 <= sleeps.calls[0] <= 0.5


def test_429_retry_after_beyond_the_deadline(
    fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    fake.route("/x", reply(status=429, headers={"Retry-After": "120"}))
    with pytest.raises(Unavailable) as caught:
        get(transport_for(fake.host), f"{fake.url}/x", seconds=10)
    message = str(caught.value)
    assert f"registry {fake.host} throttled us" in message
    assert "120s" in message
    assert sleeps.calls == []
    assert len(fake.requests_to("/x")) == 1


def test_429_every_time(fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps) -> None:
    fake.route("/x", reply(status=429, headers={"Retry-After": "1"}))
    with pytest.raises(Unavailable, match="throttled us"):
        get(transport_for(fake.host), f"{fake.url}/x")
    assert sleeps.calls == [1.0, 1.0, 1.0]
    assert len(fake.requests_to("/x")) == 4


# -- redirects ----------------------------------------------------------------------


def test_cross_host_redirect_drops_authorization(
    fake: FakeServer, storage: FakeServer, transport_for: TransportFactory
) -> None:
    fake.route("/blob", redirect(f"{storage.url}/data?{SIGNATURE}"))
    storage.route("/data", reply(b"payload"))
    status = get(
        transport_for(fake.host),
        f"{fake.url}/blob",
        headers={"Authorization": "Bearer registry-token", "Accept": "x/y"},
    )
    assert status == 200
    assert fake.requests_to("/blob")[0].authorization == "Bearer registry-token"
    (at_storage,) = storage.requests_to("/data")
    assert at_storage.authorization is None
    assert at_storage.headers["accept"] == "x/y"
    assert at_storage.query == {"X-Amz-Signature": ["deadbeefsecret"]}


def test_authorization_stays_dropped_when_redirected_back(
    fake: FakeServer, storage: FakeServer, transport_for: TransportFactory
) -> None:
    fake.route("/a", redirect(f"{storage.url}/b", 302))
    storage.route("/b", redirect(f"{fake.url}/c", 301))
    fake.route("/c", reply(b"ok"))
    assert get(transport_for(fake.host), f"{fake.url}/a", headers={"Authorization": "x"}) == 200
    assert fake.requests_to("/c")[0].authorization is None


def test_same_host_relative_redirect_keeps_authorization(
    fake: FakeServer, transport_for: TransportFactory
) -> None:
    fake.route("/a", redirect("/b", 308))
    fake.route("/b", reply(b"ok"))
    assert get(transport_for(fake.host), f"{fake.url}/a", headers={"Authorization": "x"}) == 200
    assert fake.requests_to("/b")[0].authorization == "x"


def test_too_many_redirects(fake: FakeServer, transport_for: TransportFactory) -> None:
    fake.route("/loop", redirect("/loop"))
    with pytest.raises(FailedPrecondition, match="more than 5 redirects"):
        get(transport_for(fake.host), f"{fake.url}/loop")
    assert len(fake.requests_to("/loop")) == 6


def test_redirect_without_location(fake: FakeServer, transport_for: TransportFactory) -> None:
    fake.route("/a", reply(status=302))
    with pytest.raises(FailedPrecondition, match="without a Location"):
        get(transport_for(fake.host), f"{fake.url}/a")


def test_post_303_becomes_get(fake: FakeServer, transport_for: TransportFactory) -> None:
    fake.route("/form", redirect("/result", 303), method="POST")
    fake.route("/result", reply(b"ok"))
    response = transport_for(fake.host).send(
        "POST", f"{fake.url}/form", deadline=Deadline.after(30), what="testing", data={"a": "b"}
    )
    assert response.status_code == 200
    assert fake.requests_to("/result")[0].method == "GET"


def test_5xx_at_redirect_target_retries_from_the_start_and_hides_the_url(
    fake: FakeServer, storage: FakeServer, transport_for: TransportFactory
) -> None:
    fake.route("/blob", redirect(f"{storage.url}/data?{SIGNATURE}"))
    storage.route("/data", reply(status=503))
    with pytest.raises(Unavailable) as caught:
        get(transport_for(fake.host), f"{fake.url}/blob")
    assert f"{storage.host}: HTTP 503" in str(caught.value)
    assert "deadbeefsecret" not in str(caught.value)
    assert len(fake.requests_to("/blob")) == 4


# -- TLS ----------------------------------------------------------------------------


def test_https_to_http_redirect_is_refused(
    tls_fake: FakeServer, fake: FakeServer, tls_files: TlsFiles, transport_for: TransportFactory
) -> None:
    tls_fake.route("/blob", redirect(f"{fake.url}/data"))
    fake.route("/data", reply(b"payload"))
    with pytest.raises(FailedPrecondition) as caught:
        get(
            transport_for(fake.host, ca_file=str(tls_files.cert)),
            f"{tls_fake.url}/blob",
            headers={"Authorization": "Bearer t"},
        )
    assert "from https to plain http" in str(caught.value)
    assert fake.requests == []


def test_tls_with_the_registry_ca(
    tls_fake: FakeServer, tls_files: TlsFiles, transport_for: TransportFactory
) -> None:
    tls_fake.route("/v2/", reply(b"{}"))
    transport = transport_for(ca_file=str(tls_files.cert))
    assert transport.base_url(tls_fake.host) == tls_fake.url
    assert get(transport, f"{tls_fake.url}/v2/") == 200


def test_tls_verification_failure_is_not_retried(
    tls_fake: FakeServer, transport_for: TransportFactory, sleeps: Sleeps
) -> None:
    tls_fake.route("/v2/", reply(b"{}"))
    with pytest.raises(Unavailable) as caught:
        get(transport_for(), f"{tls_fake.url}/v2/")
    message = str(caught.value)
    assert "TLS certificate verification failed" in message
    assert "--registry-ca" in message
    assert "--insecure-registry" in message
    assert tls_fake.host in message
    assert sleeps.calls == []


def test_missing_ca_file(
    tls_fake: FakeServer, transport_for: TransportFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(Unavailable, match="--registry-ca"):
        get(transport_for(ca_file=str(missing)), f"{tls_fake.url}/v2/")


def test_describe_failure_without_known_cause() -> None:
    assert describe_failure(RuntimeError("x")) == "connection failed (RuntimeError)"
