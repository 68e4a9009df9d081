"""Registry authentication: ``WWW-Authenticate`` challenges, Basic, and Docker token auth.

A registry answers an unauthenticated request with 401 and a challenge:

* ``Basic realm="..."``: send ``Authorization: Basic base64(user:pass)``;
* ``Bearer realm="https://auth/token",service="registry"``: get a token from the
  realm (``GET realm?service=..&scope=repository:<repo>:pull``, with Basic
  credentials if we have any; an identity token is exchanged with the OAuth2
  ``POST`` form instead, falling back to GET when the service lacks it) and send
  ``Authorization: Bearer <token>``. Pushes (:mod:`.upload`) ask for the scope
  ``repository:<repo>:pull,push`` the same way.

:class:`Authenticator` remembers each registry's challenge so later requests are
authorised up front, and caches tokens by (registry, scope, credential fingerprint)
for their ``expires_in`` (60 s when absent) minus a small margin.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from csi_wasm.deadline import Deadline
from csi_wasm.errors import FailedPrecondition, PermissionDenied
from csi_wasm.reference import Reference
from csi_wasm.registry.credentials import Credentials
from csi_wasm.registry.transport import Transport, read_bounded

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "PULL",
    "PUSH",
    "Authenticator",
    "Challenge",
    "TokenCache",
    "basic_authorization",
    "credentials_refused",
    "credentials_required",
    "parse_www_authenticate",
    "pull_scope",
    "repository_scope",
]

Clock = Callable[[], float]

DEFAULT_TOKEN_LIFETIME = 60.0
EXPIRY_MARGIN = 5.0
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024
OAUTH_CLIENT_ID = "csi-wasm"


# -- challenges ---------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One challenge: a lower-cased scheme and its parameters (lower-cased names)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_SEPARATORS = ' \t,="'


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse every challenge in a ``WWW-Authenticate`` value (RFC 9110 section 11.6.1).

    Parameter values may be tokens or quoted strings with backslash escapes and
    commas inside; a parameter before any scheme, or garbage, is skipped.
    """
    challenges: list[Challenge] = []
    current: Challenge | None = None
    pos, end = 0, len(header)
    while pos < end:
        while pos < end and header[pos] in " \t,":
            pos += 1
        if pos == end:
            break
        start = pos
        while pos < end and header[pos] not in _SEPARATORS:
            pos += 1
        word = header[start:pos]
        if not word:
            # A stray '=' or quoted string: skip it (and the value after a '=').
            _, pos = _value(header, pos + 1 if header[pos] == "=" else pos)
            continue
        after = pos
        while after < end and header[after] in " \t":
            after += 1
        if after < end and header[after] == "=":
            value, pos = _value(header, after + 1)
            if current is not None:
                current.params.setdefault(word.lower(), value)
        else:
            current = Challenge(word.lower(), {})
            challenges.append(current)
            pos = after
    return challenges


def _value(text: str, pos: int) -> tuple[str, int]:
    """A token or quoted string starting at ``pos`` (after spaces); returns it and the end."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos < len(text) and text[pos] == '"':
        return _quoted(text, pos + 1)
    start = pos
    while pos < len(text) and text[pos] not in " \t,":
        pos += 1
    return text[start:pos], pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    return "".join(out), pos  # unterminated: take the rest


def _preferred(challenges: list[Challenge]) -> Challenge | None:
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


# -- messages -------------------------------------------------------------------


def credentials_required(ref: Reference) -> PermissionDenied:
    return PermissionDenied(
        f"registry {ref.registry} requires credentials for {ref}; add a nodePublishSecretRef "
        "of type kubernetes.io/dockerconfigjson with an entry for that registry"
    )


def credentials_refused(ref: Reference) -> PermissionDenied:
    return PermissionDenied(
        f"registry {ref.registry} refused the credentials for {ref}; check the entry for that "
        "registry in the nodePublishSecretRef secret and that it may pull this repository"
    )


# -- tokens ---------------------------------------------------------------------


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


PULL = "pull"
PUSH = "pull,push"  # a push reads too: HEAD on blobs, mounts


def repository_scope(repository: str, access: str) -> str:
    return f"repository:{repository}:{access}"


def pull_scope(repository: str) -> str:
    return repository_scope(repository, PULL)


TokenKey = tuple[str, str, str]


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    usable_until: float


class TokenCache:
    """Bearer tokens by (registry, scope, credential fingerprint), thread-safe.

    A token is reused until ``expires_in`` seconds after the moment its request
    started, less :data:`EXPIRY_MARGIN` (at most half its lifetime).
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, _Token] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if self._clock() >= token.usable_until:
                del self._tokens[key]
                return None
            return token.value

    def put(self, key: TokenKey, value: str, expires_in: float, fetched_at: float) -> None:
        margin = min(EXPIRY_MARGIN, expires_in / 2)
        with self._lock:
            now = self._clock()
            for stale in [k for k, t in self._tokens.items() if now >= t.usable_until]:
                del self._tokens[stale]
            self._tokens[key] = _Token(value, fetched_at + expires_in - margin)

    def invalidate(self, key: TokenKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


class Authenticator:
    """Computes the ``Authorization`` value for registry requests; see module docstring."""

    def __init__(self, transport: Transport, clock: Clock = time.monotonic) -> None:
        self._transport = transport
        self._clock = clock
        self.tokens = TokenCache(clock)
        self._challenges: dict[str, Challenge] = {}
        self._lock = threading.Lock()

    def known_challenge(self, registry: str) -> Challenge | None:
        with self._lock:
            return self._challenges.get(registry)

    def preauthorize(
        self,
        ref: Reference,
        credentials: Credentials | None,
        deadline: Deadline,
        *,
        access: str = PULL,
    ) -> str | None:
        """The header value to send before any 401, from what we learned earlier."""
        challenge = self.known_challenge(ref.registry)
        if challenge is None:
            return None
        return self._authorization(
            challenge, ref, credentials, deadline, refresh=False, access=access
        )

    def on_unauthorized(
        self,
        response: requests.Response,
        ref: Reference,
        credentials: Credentials | None,
        deadline: Deadline,
        *,
        access: str = PULL,
    ) -> str | None:
        """After a 401: the header value to retry with, or ``None`` if we have none."""
        challenge = _preferred(parse_www_authenticate(response.headers.get("WWW-Authenticate", "")))
        if challenge is None:
            return None
        with self._lock:
            self._challenges[ref.registry] = challenge
        return self._authorization(
            challenge, ref, credentials, deadline, refresh=True, access=access
        )

    def _authorization(
        self,
        challenge: Challenge,
        ref: Reference,
        credentials: Credentials | None,
        deadline: Deadline,
        *,
        refresh: bool,
        access: str,
    ) -> str | None:
        if challenge.scheme == "basic":
            if credentials is None or not credentials.has_password:
                return None
            return basic_authorization(credentials)
        scope = repository_scope(ref.repository, access)
        key = (ref.registry, scope, credentials.fingerprint() if credentials else "")
        if refresh:
            self.tokens.invalidate(key)
        else:
            cached = self.tokens.get(key)
            if cached is not None:
                return f"Bearer {cached}"
        fetched_at = self._clock()
        token, expires_in = self._fetch_token(
            challenge, ref, scope, credentials, deadline, "push" if access == PUSH else "pull"
        )
        self.tokens.put(key, token, expires_in, fetched_at)
        return f"Bearer {token}"

    def _fetch_token(
        self,
        challenge: Challenge,
        ref: Reference,
        scope: str,
        credentials: Credentials | None,
        deadline: Deadline,
        purpose: str,
    ) -> tuple[str, float]:
        realm = challenge.realm
        if not realm:
            raise FailedPrecondition(
                f"registry {ref.registry} sent a Bearer challenge without a realm for {ref}; "
                "the registry is misconfigured"
            )
        parts = urlsplit(realm)
        realm_host = parts.netloc.lower()
        if parts.scheme not in ("http", "https") or not realm_host:
            raise FailedPrecondition(
                f"registry {ref.registry} named an unusable token service for {ref}; "
                "the registry is misconfigured"
            )
        if parts.scheme == "http" and not (
            self._transport.is_insecure(realm_host) or self._transport.is_insecure(ref.registry)
        ):
            raise FailedPrecondition(
                f"registry {ref.registry} sends us to a plain-http token service at {realm_host} "
                f"for {ref}; refusing, unless that host is listed with --insecure-registry"
            )
        what = f"getting a {purpose} token for {ref} from {realm_host}"
        params = {"scope": scope}
        service = challenge.params.get("service")
        if service:
            params["service"] = service

        response: requests.Response | None = None
        headers: dict[str, str] = {}
        if credentials is not None and credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": OAUTH_CLIENT_ID,
                **params,
            }
            response = self._transport.send(
                "POST", realm, deadline=deadline, what=what, data=form, stream=True
            )
            if response.status_code in (404, 405):
                response.close()
                response = None  # no OAuth2 endpoint: Basic with the token, as Docker does
                fallback = Credentials(
                    credentials.username or "<token>", credentials.identity_token
                )
                headers = {"Authorization": basic_authorization(fallback)}
        elif credentials is not None and credentials.has_password:
            headers = {"Authorization": basic_authorization(credentials)}
        if response is None:
            response = self._transport.send(
                "GET",
                realm,
                deadline=deadline,
                what=what,
                headers=headers,
                params=params,
                stream=True,
            )
        try:
            return self._read_token(
                response,
                ref=ref,
                credentials=credentials,
                deadline=deadline,
                what=what,
                realm_host=realm_host,
            )
        finally:
            response.close()

    def _read_token(
        self,
        response: requests.Response,
        *,
        ref: Reference,
        credentials: Credentials | None,
        deadline: Deadline,
        what: str,
        realm_host: str,
    ) -> tuple[str, float]:
        status = response.status_code
        if status in (401, 403):
            raise credentials_required(ref) if credentials is None else credentials_refused(ref)
        if status == 400 and credentials is not None:
            # OAuth2 answers a bad refresh token (identity token) with 400 invalid_grant.
            raise credentials_refused(ref)
        if status != 200:
            raise FailedPrecondition(
                f"token service {realm_host} answered HTTP {status} for {ref}; "
                "check the registry's auth configuration"
            )
        body = read_bounded(
            response, MAX_TOKEN_RESPONSE_BYTES, deadline, self._transport.options.read_timeout, what
        )
        not_token = FailedPrecondition(
            f"token service {realm_host} did not return a token for {ref}; "
            "check the registry's auth configuration"
        )
        if len(body) > MAX_TOKEN_RESPONSE_BYTES:
            raise not_token
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise not_token from None
        if not isinstance(document, dict):
            raise not_token
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise not_token
        expires_in = document.get("expires_in")
        lifetime = DEFAULT_TOKEN_LIFETIME
        if (
            isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and 0 < expires_in < 10**9
        ):
            lifetime = float(expires_in)
        return token, lifetime
