"""The registry client of the pull path: manifests and blobs, verified, within a deadline.

It speaks just enough of the OCI distribution API to pull: ``GET /v2/<repo>/manifests/<ref>``
and ``GET /v2/<repo>/blobs/<digest>`` (pushes use :meth:`RegistryClient.send` from
:mod:`.upload`), with Basic or Docker token auth
(:mod:`.auth`), retries, throttling and redirects (:mod:`.transport`). Every byte is
checked: a manifest against the digest asked for (or ``Docker-Content-Digest``), a blob
against its digest and declared size, and both against size limits.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import requests

from csi_wasm.deadline import Deadline
from csi_wasm.errors import (
    DigestMismatch,
    FailedPrecondition,
    HostUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from csi_wasm.reference import Reference, parse_digest
from csi_wasm.registry.auth import (
    PULL,
    Authenticator,
    credentials_refused,
    credentials_required,
)
from csi_wasm.registry.credentials import Credentials, Keychain
from csi_wasm.registry.options import RegistryOptions
from csi_wasm.registry.transport import (
    CHUNK_SIZE,
    Transport,
    content_length,
    host_of,
    new_session,
    read_bounded,
    read_some,
)

__all__ = ["Manifest", "RegistryClient"]

MAX_ERROR_BODY_BYTES = 64 * 1024
# Content types that say nothing about the manifest kind: use the body's mediaType.
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})


@dataclass(frozen=True)
class Manifest:
    """A manifest as received: its media type, the sha256 of its bytes, the bytes."""

    media_type: str
    digest: str
    body: bytes


class RegistryClient:
    """Pulls manifests and blobs; safe to share between threads.

    ``sleep`` and ``clock`` are the seams for tests: backoff sleeps and token expiry.
    A ``session`` passed in stays the caller's (``close`` leaves it open).
    """

    def __init__(
        self,
        options: RegistryOptions,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self._owns_session = session is None
        self._session = session if session is not None else new_session(options)
        self._transport = Transport(options, self._session, sleep=sleep)
        self._auth = Authenticator(self._transport, clock)

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- manifests ------------------------------------------------------------

    def get_manifest(
        self,
        ref: Reference,
        keychain: Keychain | None,
        deadline: Deadline,
        accept: Sequence[str],
    ) -> Manifest:
        """Fetch the manifest ``ref`` names (by digest when it has one, else by tag).

        Raises NotFound, PermissionDenied, Unavailable, DeadlineExceeded,
        FailedPrecondition (too big, not JSON) or DigestMismatch.
        """
        limit = self.options.max_manifest_bytes
        what = f"fetching the manifest of {ref}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        path = f"/v2/{ref.repository}/manifests/{ref.manifest_ref}"
        response = self._get(ref, path, keychain, deadline, headers=headers, what=what)
        try:
            if response.status_code == 404:
                raise self._manifest_not_found(ref, response, deadline, what)
            self._expect_ok(ref, response, what)
            declared = content_length(response)
            if declared is not None and declared > limit:
                raise _manifest_too_large(ref, f"{declared} bytes", limit)
            body = read_bounded(response, limit, deadline, self.options.read_timeout, what)
            if len(body) > limit:
                raise _manifest_too_large(ref, "more bytes", limit)
            content_type = _media_type(response.headers.get("Content-Type", ""))
            digest_header = response.headers.get("Docker-Content-Digest", "").strip()
        finally:
            response.close()

        media_type = _manifest_media_type(ref, body, content_type)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatch(
                f"the manifest registry {ref.registry} returned for {ref} hashes to {digest}, "
                "not the digest asked for; the registry or a proxy altered it"
            )
        if ref.digest is None and digest_header.startswith("sha256:") and digest_header != digest:
            raise DigestMismatch(
                f"the manifest of {ref} hashes to {digest} but registry {ref.registry} "
                f"announced {digest_header[:71]}; the registry or a proxy altered it"
            )
        return Manifest(media_type=media_type, digest=digest, body=body)

    def get_referrers(
        self, ref: Reference, digest: str, keychain: Keychain | None, deadline: Deadline
    ) -> bytes | None:
        """The referrers API's index of manifests whose subject is ``digest``.

        None when the registry has no referrers API (it answers 404; OCI 1.1 says to
        use the fallback tag then). Raises like :meth:`get_manifest`.
        """
        parse_digest(digest)
        limit = self.options.max_manifest_bytes
        what = f"listing the referrers of {ref.name}@{digest}"
        headers = {"Accept": "application/vnd.oci.image.index.v1+json"}
        path = f"/v2/{ref.repository}/referrers/{digest}"
        response = self._get(ref, path, keychain, deadline, headers=headers, what=what)
        try:
            if response.status_code == 404:
                return None
            self._expect_ok(ref, response, what)
            body = read_bounded(response, limit, deadline, self.options.read_timeout, what)
        finally:
            response.close()
        if len(body) > limit:
            raise _manifest_too_large(ref, "more bytes", limit)
        return body

    # -- blobs -------------------------------------------------------------------

    def fetch_blob(
        self,
        ref: Reference,
        digest: str,
        expected_size: int,
        dest: BinaryIO,
        keychain: Keychain | None,
        deadline: Deadline,
        *,
        limit: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream blob ``digest`` of ``ref`` into ``dest``, verifying size and sha256.

        ``progress`` is called after each chunk with the running total of bytes written
        so far (not the increment). On any error ``dest`` holds a partial
        blob the caller must discard. Errors writing ``dest`` (e.g. ENOSPC) propagate
        as the ``OSError`` they are.
        """
        parse_digest(digest)
        if expected_size < 0:
            raise InvalidArgument(f"blob {digest} of {ref} has a negative size in its manifest")
        if expected_size > limit:
            raise _too_large(ref, f"{expected_size} bytes", limit)
        what = f"downloading blob {_short(digest)} of {ref}"
        path = f"/v2/{ref.repository}/blobs/{digest}"
        headers = {"Accept-Encoding": "identity"}
        response = self._get(ref, path, keychain, deadline, headers=headers, what=what)
        try:
            if response.status_code == 404:
                raise NotFound(
                    f"blob {digest} of {ref} was not found in registry {ref.registry}; "
                    "the manifest names a layer the registry does not have, push the module again"
                )
            self._expect_ok(ref, response, what)
            declared = content_length(response)
            if declared is not None and declared > limit:
                raise _too_large(ref, f"{declared} bytes", limit)
            if declared is not None and declared > expected_size:
                raise _announced_larger(ref, digest, declared, expected_size)
            self._stream_into(
                response,
                dest,
                deadline=deadline,
                what=what,
                expected_size=expected_size,
                progress=progress,
                ref=ref,
                digest=digest,
            )
        finally:
            response.close()

    def _stream_into(
        self,
        response: requests.Response,
        dest: BinaryIO,
        *,
        deadline: Deadline,
        what: str,
        expected_size: int,
        progress: Callable[[int], None] | None,
        ref: Reference,
        digest: str,
    ) -> None:
        hasher = hashlib.sha256()
        received = 0
        while True:
            chunk = read_some(response, CHUNK_SIZE, deadline, self.options.read_timeout, what)
            if not chunk:
                break
            received += len(chunk)
            if received > expected_size:
                raise _sent_larger(ref, digest, expected_size)
            hasher.update(chunk)
            dest.write(chunk)
            if progress is not None:
                progress(received)
        if received < expected_size:
            raise HostUnavailable(
                f"the download of blob {_short(digest)} of {ref} from {host_of(response.url)} "
                f"ended after {received} of {expected_size} bytes (truncated); kubelet will retry"
            )
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(
                f"blob {_short(digest)} of {ref} hashes to {actual}, not {digest}; "
                f"the registry {ref.registry} or a proxy altered it"
            )

    # -- shared -----------------------------------------------------------------

    def api_url(self, ref: Reference, path: str) -> str:
        """``scheme://api-host`` of ``ref``'s registry followed by ``path`` (``/v2/...``)."""
        return self._transport.base_url(ref.registry) + path

    def _get(
        self,
        ref: Reference,
        path: str,
        keychain: Keychain | None,
        deadline: Deadline,
        *,
        headers: dict[str, str],
        what: str,
    ) -> requests.Response:
        url = self.api_url(ref, path)
        return self.send("GET", ref, url, keychain, deadline, headers=headers, what=what)

    def send(
        self,
        method: str,
        ref: Reference,
        url: str,
        keychain: Keychain | None,
        deadline: Deadline,
        *,
        headers: dict[str, str],
        what: str,
        access: str = PULL,
        body: bytes | None = None,
    ) -> requests.Response:
        """A request about ``ref`` with authentication for ``access`` (pull, or push).

        401/403 become PermissionDenied; any other response is returned, streamed: the
        caller closes it. Used for pulls here and for pushes by :mod:`.upload`. A ``url``
        on another host (an upload ``Location``) gets no credentials, as a redirect would not.
        """
        credentials = keychain.for_registry(ref.registry) if keychain is not None else None
        authorization = None
        if host_of(url) == host_of(self.api_url(ref, "")):
            authorization = self._auth.preauthorize(ref, credentials, deadline, access=access)
        request = _Outgoing(method, url, headers, body, what)
        response = self._send(request, authorization, deadline)
        if response.status_code == 401 and self._from_registry(ref, response):
            retry_with = self._auth.on_unauthorized(
                response, ref, credentials, deadline, access=access
            )
            response.close()
            if retry_with is None:
                raise _denied(ref, credentials)
            response = self._send(request, retry_with, deadline)
        if response.status_code in (401, 403):
            response.close()
            if not self._from_registry(ref, response):
                raise HostUnavailable(
                    f"storage host {host_of(response.url)} refused the redirected download "
                    f"(HTTP {response.status_code}) while {what}; kubelet will retry"
                )
            raise _denied(ref, credentials)
        return response

    def _send(
        self, request: _Outgoing, authorization: str | None, deadline: Deadline
    ) -> requests.Response:
        request_headers = dict(request.headers)
        if authorization is not None:
            request_headers["Authorization"] = authorization
        return self._transport.send(
            request.method,
            request.url,
            deadline=deadline,
            what=request.what,
            headers=request_headers,
            data=request.body,
            stream=True,
        )

    def _from_registry(self, ref: Reference, response: requests.Response) -> bool:
        return host_of(response.url) == host_of(self._transport.base_url(ref.registry))

    def _expect_ok(self, ref: Reference, response: requests.Response, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        raise FailedPrecondition(
            f"registry {ref.registry} answered HTTP {status} while {what}; "
            "check the reference and the registry address"
        )

    def _manifest_not_found(
        self, ref: Reference, response: requests.Response, deadline: Deadline, what: str
    ) -> NotFound:
        codes = _error_codes(response, deadline, self.options.read_timeout, what)
        if "NAME_UNKNOWN" in codes:
            return NotFound(
                f"repository {ref.repository} was not found in registry {ref.registry} "
                f"(pulling {ref}); check the reference"
            )
        if ref.digest is not None:
            return NotFound(
                f"digest {ref.digest} of {ref.name} was not found in registry {ref.registry}; "
                "check the reference"
            )
        return NotFound(
            f"tag {ref.manifest_ref!r} of {ref.name} was not found in registry "
            f"{ref.registry}; check the tag"
        )


@dataclass(frozen=True)
class _Outgoing:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = field(repr=False)
    what: str


def _denied(ref: Reference, credentials: Credentials | None) -> PermissionDenied:
    return credentials_required(ref) if credentials is None else credentials_refused(ref)


def _short(digest: str) -> str:
    return digest[:19]


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _too_large(ref: Reference, size: str, limit: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"module {ref} is too large ({size}, the limit is {limit} bytes); "
        "raise --max-module-bytes if it is meant to be this big"
    )


def _announced_larger(ref: Reference, digest: str, size: int, expected: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"registry {ref.registry} announced {size} bytes for blob {_short(digest)} of {ref} "
        f"but its manifest declares {expected}; refusing it"
    )


def _sent_larger(ref: Reference, digest: str, expected: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"registry {ref.registry} sent more than the {expected} bytes the manifest declares "
        f"for blob {_short(digest)} of {ref}; refusing it"
    )


def _manifest_too_large(ref: Reference, size: str, limit: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"the manifest of {ref} is too large ({size}, the limit is {limit} bytes); "
        "it is probably not a Wasm module artifact"
    )


def _manifest_media_type(ref: Reference, body: bytes, content_type: str) -> str:
    not_manifest = FailedPrecondition(
        f"registry {ref.registry} returned something that is not a JSON manifest for {ref} "
        f"(Content-Type {content_type or 'missing'!r}); check the registry address and reference"
    )
    if content_type == "text/html":
        raise not_manifest
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise not_manifest from None
    if not isinstance(document, dict):
        raise not_manifest
    if content_type not in _GENERIC_TYPES:
        return content_type
    body_type = document.get("mediaType")
    return body_type if isinstance(body_type, str) and body_type else content_type


def _error_codes(
    response: requests.Response, deadline: Deadline, read_timeout: float, what: str
) -> set[str]:
    """The ``errors[].code`` values of a registry error body (best effort)."""
    try:
        body = read_bounded(response, MAX_ERROR_BODY_BYTES, deadline, read_timeout, what)
        document = json.loads(body)
    except (ValueError, RecursionError, Unavailable):
        return set()
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)}
