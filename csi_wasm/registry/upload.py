"""Pushing to a registry: blobs and manifests, over the pull path's own client.

What ``csi-wasm push`` needs of the OCI distribution API, and no more:

* ``HEAD /v2/<repo>/blobs/<digest>``: a blob the registry has is not sent again;
* a monolithic blob upload: ``POST /v2/<repo>/blobs/uploads/`` opens an upload
  session (202 and a ``Location``), ``PUT <location>?digest=<digest>`` sends the
  whole blob in one request (201);
* ``PUT /v2/<repo>/manifests/<tag>`` with the manifest's media type (201); the
  ``Docker-Content-Digest`` the registry answers must be the digest we computed.

Requests go through :meth:`RegistryClient.send`, so a push has the pull's transport
(timeouts, retries, redirects, TLS options, insecure hosts) and authentication, with a
token for the scope ``repository:<repo>:pull,push``. Bodies are bytes: a retried or
redirected request sends them again. A refusal names the flag that supplies
credentials, never the credentials.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests

from csi_wasm.deadline import Deadline
from csi_wasm.errors import CsiWasmError, FailedPrecondition, InvalidArgument, PermissionDenied
from csi_wasm.reference import Reference
from csi_wasm.registry.auth import PUSH
from csi_wasm.registry.client import MAX_ERROR_BODY_BYTES, RegistryClient
from csi_wasm.registry.credentials import Keychain
from csi_wasm.registry.transport import read_bounded

__all__ = ["RegistryUploader", "sha256_digest"]

OCTET_STREAM = "application/octet-stream"
_MAX_SHOWN_ERROR = 200


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryUploader:
    """Pushes blobs and manifests with a :class:`RegistryClient`'s transport and auth."""

    def __init__(self, client: RegistryClient, keychain: Keychain | None) -> None:
        self._client = client
        self._keychain = keychain

    def has_blob(self, ref: Reference, digest: str, deadline: Deadline) -> bool:
        """Whether ``ref``'s repository already holds blob ``digest``."""
        what = f"checking for blob {digest[:19]} in {ref.name}"
        url = self._client.api_url(ref, f"/v2/{ref.repository}/blobs/{digest}")
        with self._send("HEAD", ref, url, deadline, what=what) as response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise self._refused(ref, response, deadline, what)

    def push_blob(self, ref: Reference, data: bytes, deadline: Deadline) -> bool:
        """Upload ``data`` unless the registry has it; True when it was sent."""
        digest = sha256_digest(data)
        if self.has_blob(ref, digest, deadline):
            return False
        what = f"uploading blob {digest[:19]} to {ref.name}"
        start = self._client.api_url(ref, f"/v2/{ref.repository}/blobs/uploads/")
        with self._send("POST", ref, start, deadline, what=what) as response:
            if response.status_code != 202:
                raise self._refused(ref, response, deadline, what)
            location = response.headers.get("Location", "")
            if not location:
                raise FailedPrecondition(
                    f"registry {ref.registry} opened an upload without a Location while {what}; "
                    "check for a proxy that strips response headers, or push to another registry"
                )
            target = _with_digest(urljoin(response.url or start, location), digest)
        headers = {"Content-Type": OCTET_STREAM}
        put = self._send("PUT", ref, target, deadline, what=what, headers=headers, body=data)
        with put as done:
            if done.status_code != 201:
                raise self._refused(ref, done, deadline, what)
        return True

    def push_manifest(
        self, ref: Reference, body: bytes, media_type: str, deadline: Deadline
    ) -> str:
        """Store ``body`` under ``ref``'s tag; returns its digest."""
        if ref.digest is not None or ref.tag is None:
            raise InvalidArgument(f"push {ref} needs a tag and no digest, e.g. {ref.name}:v1")
        digest = sha256_digest(body)
        what = f"pushing the manifest of {ref}"
        url = self._client.api_url(ref, f"/v2/{ref.repository}/manifests/{ref.tag}")
        headers = {"Content-Type": media_type}
        with self._send("PUT", ref, url, deadline, what=what, headers=headers, body=body) as done:
            if done.status_code != 201:
                raise self._refused(ref, done, deadline, what)
            announced = done.headers.get("Docker-Content-Digest", "").strip()
        if announced.startswith("sha256:") and announced != digest:
            raise FailedPrecondition(
                f"registry {ref.registry} stored the manifest of {ref} as {announced[:71]}, "
                f"not {digest}; a proxy altered it"
            )
        return digest

    # -- shared -----------------------------------------------------------------

    def _send(
        self,
        method: str,
        ref: Reference,
        url: str,
        deadline: Deadline,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> requests.Response:
        try:
            return self._client.send(
                method,
                ref,
                url,
                self._keychain,
                deadline,
                headers=headers or {},
                what=what,
                access=PUSH,
                body=body,
            )
        except PermissionDenied:
            raise self._denied(ref) from None

    def _denied(self, ref: Reference) -> PermissionDenied:
        has = self._keychain is not None and self._keychain.for_registry(ref.registry) is not None
        if not has:
            return PermissionDenied(
                f"registry {ref.registry} requires credentials to push {ref}; pass "
                "--docker-config FILE with an entry for that registry (docker login writes one)"
            )
        return PermissionDenied(
            f"registry {ref.registry} refused the credentials from --docker-config for pushing "
            f"{ref}; check that entry and that it may push to {ref.repository}"
        )

    def _refused(
        self, ref: Reference, response: requests.Response, deadline: Deadline, what: str
    ) -> FailedPrecondition:
        status = response.status_code
        detail = ""
        if response.request.method != "HEAD":
            detail = _error_detail(response, deadline, self._client.options.read_timeout, what)
        return FailedPrecondition(
            f"registry {ref.registry} answered HTTP {status}{detail} while {what}; "
            "check the reference and that the registry accepts pushes"
        )


def _with_digest(location: str, digest: str) -> str:
    """The upload URL with ``digest=`` added to whatever query the registry put there."""
    parts = urlsplit(location)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"digest": digest})))


def _error_detail(
    response: requests.Response, deadline: Deadline, read_timeout: float, what: str
) -> str:
    """`` (CODE: message)`` from a registry error body, shortened; "" when there is none."""
    try:
        body = read_bounded(response, MAX_ERROR_BODY_BYTES, deadline, read_timeout, what)
        document = json.loads(body)
    except (ValueError, RecursionError, CsiWasmError):
        return ""  # the status alone still says what happened
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return ""
    code, message = errors[0].get("code"), errors[0].get("message")
    text = ": ".join(str(part) for part in (code, message) if isinstance(part, str) and part)
    text = " ".join(text.split())[:_MAX_SHOWN_ERROR]
    return f" ({text})" if text else ""
