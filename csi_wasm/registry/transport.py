"""One HTTP exchange with a registry: timeouts, retries, throttling and redirects.

:meth:`Transport.send` turns "GET this URL" into a response whose status is not a
redirect, not 429 and not 5xx, or raises one of our errors:

* every attempt's connect and read timeouts are clipped to the pull's :class:`Deadline`;
* connection errors, timeouts and 5xx are retried ``max_retries`` times with
  exponential backoff and jitter; 4xx are returned at once for the caller to map;
* 429 waits for ``Retry-After`` seconds when that fits in the deadline;
* redirects are followed here (at most :data:`MAX_REDIRECTS`), never from https to
  http, and the ``Authorization`` header is dropped as soon as the host changes
  (blob downloads are redirected to object storage with signed URLs);
* TLS failures are not retried: they need ``--registry-ca`` or ``--insecure-registry``;
* a mirror (a host in ``options.mirror_hosts``) gets one attempt and
  ``options.mirror_timeout`` to connect and to start answering: the source is the
  fallback, so waiting on a dead mirror only delays the pull.

Error messages name hosts, never URLs: a signed storage URL is a credential too.
The library exception is chained as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions

from csi_wasm.deadline import Deadline
from csi_wasm.errors import DeadlineExceeded, FailedPrecondition, HostUnavailable, Unavailable
from csi_wasm.reference import DOCKER_HUB, DOCKER_HUB_API_HOST
from csi_wasm.registry.options import RegistryOptions

__all__ = [
    "CHUNK_SIZE",
    "MAX_REDIRECTS",
    "Transport",
    "content_length",
    "describe_failure",
    "host_of",
    "new_session",
    "read_bounded",
    "read_some",
]

_log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
POOL_SIZE = 16
CHUNK_SIZE = 1024 * 1024

Sleep = Callable[[float], None]


class _NoAuth(requests.auth.AuthBase):
    """An explicit no-op auth: stops requests from filling Authorization from ~/.netrc."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


_NO_NETRC = _NoAuth()


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, lower-cased."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()


def new_session(options: RegistryOptions) -> requests.Session:
    """A session with pools sized for concurrent pulls and without library retries."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = options.user_agent
    return session


class Transport:
    """Sends requests for the registry client; see the module docstring."""

    def __init__(
        self,
        options: RegistryOptions,
        session: requests.Session,
        *,
        sleep: Sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.session = session
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter only
        self._insecure = frozenset(h.strip().lower() for h in options.insecure_registries)
        self._verify: bool | str = options.ca_file if options.ca_file else True
        self._mirror_hosts = frozenset(h.lower() for h in options.mirror_hosts)

    # -- addressing ---------------------------------------------------------

    def is_insecure(self, host: str) -> bool:
        """Whether ``host[:port]`` was listed (by itself, or by its bare host name)."""
        host = host.lower()
        if host in self._insecure:
            return True
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return bare in self._insecure

    def base_url(self, registry: str) -> str:
        """``scheme://api-host`` for a :attr:`Reference.registry`."""
        api_host = DOCKER_HUB_API_HOST if registry == DOCKER_HUB else registry
        insecure = self.is_insecure(registry) or self.is_insecure(api_host)
        return f"{'http' if insecure else 'https'}://{api_host}"

    # -- sending ------------------------------------------------------------

    def send(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline,
        what: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | bytes | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send with retries and redirects; return a final non-5xx, non-429 response.

        ``what`` completes "while ..." in messages, e.g. "fetching the manifest of X".
        ``data`` is a form or a body in bytes (bytes, so a retry can send it again).
        With ``stream=True`` the caller owns the response and must close it.
        """
        host = host_of(url)
        mirror = host in self._mirror_hosts
        patience = self.options.mirror_timeout if mirror else None
        request = _Request(method, url, dict(headers or {}), params, data, stream, patience)
        attempts = 1 if mirror else max(0, self.options.max_retries) + 1
        last = ""
        delay = 0.0
        for attempt in range(attempts):
            if attempt:
                self._pause(delay, deadline, f"registry {host} is unavailable while {what}: {last}")
            deadline.check(f"{what} from {host}")
            outcome = self._attempt(request, deadline, what)
            if isinstance(outcome, requests.Response):
                return outcome
            last = outcome.text
            throttled = f"registry {host} throttled us (HTTP 429) while {what}"
            if attempt + 1 == attempts:
                if outcome.status == 429:
                    raise HostUnavailable(
                        f"{throttled}, {attempts} times in a row; kubelet will retry"
                    )
                raise HostUnavailable(
                    f"registry {host} is unavailable while {what}: {last} "
                    f"(after {attempts} attempt{'s' if attempts > 1 else ''}); kubelet will retry"
                ) from outcome.cause
            delay = self._backoff(attempt)
            if outcome.retry_after is not None:
                left = deadline.remaining()
                if outcome.retry_after >= left:
                    raise HostUnavailable(
                        f"{throttled} and asked to wait {outcome.retry_after:g}s, more than the "
                        f"{left:.0f}s left of the pull; kubelet will retry"
                    )
                delay = outcome.retry_after
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self, request: _Request, deadline: Deadline, what: str
    ) -> requests.Response | _Failure:
        """One try (with its redirects): a final response, or a failure worth retrying."""
        try:
            response = self._follow(request, deadline, what)
        except requests.exceptions.SSLError as exc:
            failed_host = host_of(_request_url(exc, request.url))
            raise HostUnavailable(_tls_message(exc, failed_host, what)) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            text = f"{host_of(_request_url(exc, request.url))}: {describe_failure(exc)}"
            if deadline.expired():
                raise DeadlineExceeded(
                    f"timed out while {what} ({text}); check the registry's "
                    "reachability and speed, or raise --pull-timeout"
                ) from exc
            return _Failure(text, cause=exc)
        except OSError as exc:  # not a RequestException: e.g. an unreadable CA bundle
            if self.options.ca_file:
                raise Unavailable(
                    f"cannot use the CA bundle {self.options.ca_file!r} given with "
                    f"--registry-ca while {what} ({type(exc).__name__}); fix the file"
                ) from exc
            raise
        status = response.status_code
        if status < 500 and status != 429:
            return response
        response.close()
        text = f"{host_of(response.url or request.url)}: HTTP {status}"
        if status == 429:
            return _Failure(text, status, _retry_after(response.headers.get("Retry-After")))
        return _Failure(text, status)

    def _follow(self, request: _Request, deadline: Deadline, what: str) -> requests.Response:
        method, url, headers = request.method, request.url, dict(request.headers)
        params, data = request.params, request.data
        connect, read = self.options.connect_timeout, self.options.read_timeout
        if request.patience is not None:
            connect, read = min(connect, request.patience), min(read, request.patience)
        for _hop in range(MAX_REDIRECTS + 1):
            timeout = (
                self._clip(deadline, connect, what, url),
                self._clip(deadline, read, what, url),
            )
            response = self.session.request(
                method,
                url,
                headers=headers,
                params=params,
                data=data,
                stream=request.stream,
                timeout=timeout,
                allow_redirects=False,
                verify=self._verify,
                auth=_NO_NETRC,
            )
            status = response.status_code
            if status not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("Location")
            here = response.url or url
            response.close()
            target = _redirect_target(here, location, status, what)
            if host_of(target) != host_of(here):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if status == 303 or (method == "POST" and status in (301, 302)):
                method, data = "GET", None
            url, params = target, None
        raise FailedPrecondition(
            f"more than {MAX_REDIRECTS} redirects while {what} (last at {host_of(url)}); "
            "the registry is misbehaving"
        )

    # -- helpers ------------------------------------------------------------

    def _clip(self, deadline: Deadline, timeout: float, what: str, url: str) -> float:
        try:
            return deadline.clip(timeout)
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(
                f"timed out while {what} from {host_of(url)}; check the registry's "
                "reachability and speed, or raise --pull-timeout"
            ) from exc

    def _backoff(self, attempt: int) -> float:
        ceiling: float = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _pause(self, delay: float, deadline: Deadline, failing: str) -> None:
        if delay >= deadline.remaining():
            raise HostUnavailable(
                f"{failing}; no time left in the pull to retry; kubelet will retry"
            )
        _log.info("%s; retrying in %.2fs", failing, delay)
        if delay > 0:
            self._sleep(delay)


@dataclass(frozen=True)
class _Failure:
    """Why an attempt failed (host and cause, never a URL), and how long to wait."""

    text: str
    status: int | None = None
    retry_after: float | None = None
    cause: BaseException | None = None


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    params: Mapping[str, str] | None
    data: Mapping[str, str] | bytes | None = field(repr=False)
    stream: bool
    patience: float | None  # a mirror's timeout to connect and to start answering


def _redirect_target(here: str, location: str | None, status: int, what: str) -> str:
    if not location:
        raise FailedPrecondition(
            f"{host_of(here)} answered HTTP {status} without a Location while {what}; "
            "the registry is misbehaving"
        )
    target = urljoin(here, location)
    old_scheme, new_scheme = urlsplit(here).scheme, urlsplit(target).scheme
    if new_scheme not in ("http", "https"):
        raise FailedPrecondition(
            f"{host_of(here)} redirected to an unsupported {new_scheme!r} URL while {what}; "
            "the registry is misbehaving"
        )
    if old_scheme == "https" and new_scheme == "http":
        raise FailedPrecondition(
            f"{host_of(here)} redirected from https to plain http ({host_of(target)}) "
            f"while {what}; refusing the downgrade"
        )
    return target


def read_some(
    response: requests.Response,
    amount: int,
    deadline: Deadline,
    read_timeout: float,
    what: str,
    *,
    decode: bool = True,
) -> bytes:
    """Read up to ``amount`` body bytes, returning as soon as any arrive (b"" at the end).

    The socket timeout is tightened to what is left of the deadline before every
    read, so neither a stalled nor a trickling server can outlast the deadline.
    ``decode=False`` returns the bytes as sent, even if the server compressed them
    (a module URL's body is sniffed by the caller).
    """
    host = host_of(response.url)
    deadline.check(f"{what} from {host}")
    _set_socket_timeout(response, min(read_timeout, max(deadline.remaining(), 0.001)))
    try:
        # Decoded by default: a proxy may gzip a manifest; urllib3 bounds the inflated
        # size by amount.
        return response.raw.read1(amount, decode_content=decode)
    except urllib3.exceptions.ReadTimeoutError as exc:
        if deadline.expired():
            raise DeadlineExceeded(
                f"timed out while {what} from {host}; check the registry's reachability "
                "and speed, or raise --pull-timeout"
            ) from exc
        raise HostUnavailable(
            f"{host} stopped sending data for {read_timeout:g}s while {what}; kubelet will retry"
        ) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise HostUnavailable(
            f"{host} broke off the transfer while {what} ({describe_failure(exc)}); "
            "the body is truncated, kubelet will retry"
        ) from exc


def content_length(response: requests.Response) -> int | None:
    """The Content-Length a response announces, if it is a sane number."""
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def read_bounded(
    response: requests.Response,
    limit: int,
    deadline: Deadline,
    read_timeout: float,
    what: str,
) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer than ``limit``."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = read_some(response, min(CHUNK_SIZE, limit + 1 - size), deadline, read_timeout, what)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _set_socket_timeout(response: requests.Response, seconds: float) -> None:
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    settimeout = getattr(sock, "settimeout", None)
    if settimeout is not None:
        with contextlib.suppress(OSError):  # already closed: the read will say so
            settimeout(seconds)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _request_url(exc: requests.exceptions.RequestException, fallback: str) -> str:
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    return url if isinstance(url, str) else fallback


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[Any] = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *current.args,
        ]
        todo.extend(item for item in linked if isinstance(item, BaseException))


_FAILURE_TEXTS: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((ConnectionRefusedError,), "connection refused"),
    ((socket.gaierror, urllib3.exceptions.NameResolutionError), "DNS lookup failed"),
    (
        (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError),
        "timed out connecting",
    ),
    (
        (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError),
        "timed out waiting for data",
    ),
    ((ConnectionResetError,), "connection reset"),
    ((urllib3.exceptions.IncompleteRead,), "connection closed before the body was complete"),
)


def describe_failure(exc: BaseException) -> str:
    """A short, URL-free description of why a connection failed."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({cause.verify_message})"
    # Most specific first, over the whole chain: urllib3's NewConnectionError is a
    # ConnectTimeoutError subclass even when the cause is a refused connection.
    for types, text in _FAILURE_TEXTS:
        for cause in causes:
            if isinstance(cause, types) and not (
                text == "timed out connecting"
                and isinstance(cause, urllib3.exceptions.NewConnectionError)
            ):
                return text
    return f"connection failed ({type(exc).__name__})"


def _tls_message(exc: BaseException, host: str, what: str) -> str:
    detail = "TLS handshake failed"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = f"TLS certificate verification failed ({cause.verify_message})"
            break
    return (
        f"{detail} for {host} while {what}; if the registry uses a private CA pass "
        "--registry-ca FILE, or if it serves plain http list it with --insecure-registry"
    )
