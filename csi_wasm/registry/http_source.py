"""Download a module given as a plain ``https://`` URL, with the registry's transport.

A pod may name its module by URL (``url: https://host/path/filter.wasm`` plus the
required ``sha256``). :class:`HttpSourceClient` fetches such a URL with the same
:class:`~csi_wasm.registry.transport.Transport` (and so the same ``requests`` session,
timeouts, retries, 429 handling, TLS settings and redirect rules) as the registry
client, and writes the body's bytes, exactly as sent, into a file:

* ``https`` only; ``http`` just for hosts given with ``--insecure-registry``;
* no credentials: ``Authorization`` is never sent, and a URL with ``user:pass@`` is
  refused (401/403 say to host the module elsewhere or to use an OCI registry);
* no decoding: it asks for ``Accept-Encoding: identity`` and writes the raw bytes even
  if a server compresses anyway; the caller sniffs raw Wasm, gzip or tar and checks
  the sha256;
* bounded by ``limit`` bytes (``--max-module-bytes``) and by the pull's
  :class:`Deadline`, chunk by chunk, so a trickling server cannot outlast it.

Messages and logs name ``scheme://host/path`` (see :func:`display_url`), never the
query string or user info: a signed URL's query is a credential.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlsplit

import requests

from csi_wasm.deadline import Deadline
from csi_wasm.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from csi_wasm.registry.client import RegistryClient
from csi_wasm.registry.transport import (
    CHUNK_SIZE,
    Transport,
    content_length,
    host_of,
    read_some,
)

__all__ = ["HttpSourceClient", "display_url"]

MAX_DISPLAY_PATH = 120


def display_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no user info, query or fragment.

    Safe for messages and logs; long paths are shortened.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed url>"
    path = parts.path or "/"
    if len(path) > MAX_DISPLAY_PATH:
        path = path[:MAX_DISPLAY_PATH] + "..."
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    return f"{parts.scheme.lower()}://{host}{path}"


class HttpSourceClient:
    """Fetches modules given by URL; safe to share between threads.

    It borrows a :class:`Transport` (and its session) and closes nothing: whoever owns
    the session closes it. Build it from the pull path's registry client with
    :meth:`from_registry_client`, so both share one connection pool, one CA bundle
    and one list of insecure hosts.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @classmethod
    def from_registry_client(cls, client: RegistryClient) -> HttpSourceClient:
        """Share ``client``'s transport: its session, options and (test) sleep."""
        return cls(client._transport)

    def fetch(
        self,
        url: str,
        dest: BinaryIO,
        deadline: Deadline,
        *,
        limit: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write the body of ``url``, undecoded, into ``dest``; return its size in bytes.

        ``progress`` is called after each chunk with the running total written so far.
        Raises InvalidArgument (scheme, malformed URL), NotFound (404, 410),
        PermissionDenied (401, 403), FailedPrecondition (other 4xx, too large, unsafe
        redirect), Unavailable (unreachable, 5xx or 429 after retries, truncated body)
        or DeadlineExceeded. On any error ``dest`` holds a partial body the caller must
        discard; errors writing ``dest`` (e.g. ENOSPC) propagate as the ``OSError`` they
        are.
        """
        shown = self._check_url(url)
        what = f"downloading the module {shown}"
        try:
            response = self._transport.send(
                "GET",
                url,
                deadline=deadline,
                what=what,
                headers={"Accept-Encoding": "identity"},
                stream=True,
            )
        except requests.exceptions.InvalidURL as exc:
            raise InvalidArgument(
                f"url {shown} is not a valid URL ({type(exc).__name__}); check volume "
                "attribute 'url'"
            ) from None
        try:
            _check_status(response, shown)
            declared = content_length(response)
            if declared is not None and declared > limit:
                raise _too_large(shown, f"it announces {declared} bytes", limit)
            return self._stream_into(
                response, dest, deadline, what, shown, declared, limit, progress
            )
        finally:
            response.close()

    # -- helpers --------------------------------------------------------------

    def _check_url(self, url: str) -> str:
        """Validate scheme, host and characters; return the URL as it may be shown."""
        shown = display_url(url)
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
            raise InvalidArgument(
                f"url {shown} contains spaces or control characters; percent-encode them"
            )
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            raise InvalidArgument(
                f"url {shown} is not a valid URL; expected https://HOST[:PORT]/PATH"
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidArgument(
                f"url {shown} has scheme {scheme!r}; modules are downloaded over https:// "
                "(http:// only for hosts given with --insecure-registry), or use oci://"
            )
        if not parts.hostname:
            raise InvalidArgument(f"url {shown} has no host; expected https://HOST[:PORT]/PATH")
        if "@" in parts.netloc:
            raise InvalidArgument(
                f"url {shown} carries user info; https sources with credentials are not "
                "supported; host it where the node can read it or use an OCI registry "
                "with nodePublishSecretRef"
            )
        host = host_of(url)
        if scheme == "http" and not self._transport.is_insecure(host):
            raise InvalidArgument(
                f"url {shown}: http:// is only allowed for hosts given with "
                f"--insecure-registry ({host} is not); use https"
            )
        return shown

    def _stream_into(
        self,
        response: requests.Response,
        dest: BinaryIO,
        deadline: Deadline,
        what: str,
        shown: str,
        declared: int | None,
        limit: int,
        progress: Callable[[int], None] | None,
    ) -> int:
        read_timeout = self._transport.options.read_timeout
        written = 0
        while True:
            amount = min(CHUNK_SIZE, limit + 1 - written)
            chunk = read_some(response, amount, deadline, read_timeout, what, decode=False)
            if not chunk:
                break
            if written + len(chunk) > limit:
                raise _too_large(shown, "it sent more bytes", limit)
            dest.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(written)
        if declared is not None and written < declared:
            raise Unavailable(
                f"the download of {shown} from {host_of(response.url)} ended after {written} "
                f"of {declared} bytes (truncated); kubelet will retry"
            )
        return written


def _check_status(response: requests.Response, shown: str) -> None:
    status = response.status_code
    if status == 200:
        return
    host = host_of(response.url)
    if status in (404, 410):
        raise NotFound(
            f"{host} answered HTTP {status} for the module {shown}: not found; check volume "
            "attribute 'url'"
        )
    if status in (401, 403):
        raise PermissionDenied(
            f"{host} answered HTTP {status} for the module {shown}: https sources with "
            "credentials are not supported; host it where the node can read it or use an "
            "OCI registry with nodePublishSecretRef"
        )
    raise FailedPrecondition(
        f"{host} answered HTTP {status} for the module {shown} (expected 200); check "
        "volume attribute 'url' and the server"
    )


def _too_large(shown: str, size: str, limit: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"the module {shown} is larger than --max-module-bytes ({size}; the limit is "
        f"{limit} bytes); raise --max-module-bytes if it is meant to be this big"
    )
