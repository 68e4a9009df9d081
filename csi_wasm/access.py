"""Who may be served a private module from the shared cache.

The cache is shared by every pod on the node, so a module pulled with one pod's
credentials must not reach another pod that lacks them (the problem KEP-2535
solved for container images). Per repository we record whether it could be pulled
anonymously and which credentials were verified, and when. A cached module from a
repository that needed credentials is served only to a request whose own
credentials were verified within the window; otherwise the caller must verify them
with the registry first.

Credentials are recorded as an HMAC keyed with a random per-node key kept in
``<root>/access/.key`` (0600): the records never hold the secret, and without the
key they cannot be used to test guesses offline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from csi_wasm.atomic import write_atomic
from csi_wasm.registry import Credentials

DEFAULT_WINDOW_SECONDS = 3600.0
_KEY_FILE = ".key"
_MAX_VERIFIED = 64  # credentials remembered per repository; the oldest are forgotten


@dataclass(frozen=True)
class AccessRecord:
    anonymous: bool
    verified: dict[str, float]  # credential hash -> when it last worked (unix time)


class AccessRecords:
    def __init__(
        self,
        directory: Path,
        window: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._key = b""

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key_path = self.directory / _KEY_FILE
        try:
            self._key = key_path.read_bytes()
        except FileNotFoundError:
            self._key = b""
        if len(self._key) < 32:
            self._key = secrets.token_bytes(32)
            write_atomic(key_path, self._key, mode=0o600)

    def credential_hash(self, credentials: Credentials | None) -> str | None:
        if credentials is None:
            return None
        material = json.dumps(
            [credentials.username, credentials.password, credentials.identity_token]
        )
        return hmac.new(self._key, material.encode(), hashlib.sha256).hexdigest()

    def may_serve(self, repository: str, credentials: Credentials | None) -> bool:
        """True when a cached module of ``repository`` may go to these credentials unchecked."""
        record = self._read(repository)
        if record is None:
            return False
        if record.anonymous:
            return True
        key = self.credential_hash(credentials)
        seen = record.verified.get(key) if key is not None else None
        return seen is not None and self._clock() - seen <= self.window

    def record_pull(self, repository: str, credentials: Credentials | None) -> None:
        """The registry just served ``repository`` to these credentials (None: anonymously)."""
        with self._lock:
            record = self._read(repository) or AccessRecord(anonymous=False, verified={})
            if credentials is None:
                record = AccessRecord(anonymous=True, verified=record.verified)
            else:
                key = self.credential_hash(credentials)
                assert key is not None
                verified = {**record.verified, key: self._clock()}
                newest = sorted(verified.items(), key=lambda item: item[1])[-_MAX_VERIFIED:]
                record = AccessRecord(anonymous=record.anonymous, verified=dict(newest))
            body = {
                "repository": repository,
                "anonymous": record.anonymous,
                "verified": record.verified,
            }
            write_atomic(self._path(repository), json.dumps(body).encode(), durable=False)

    def _path(self, repository: str) -> Path:
        return self.directory / hashlib.sha256(repository.encode()).hexdigest()

    def _read(self, repository: str) -> AccessRecord | None:
        try:
            data = json.loads(self._path(repository).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("repository") != repository:
            return None
        verified = data.get("verified")
        if not isinstance(verified, dict):
            verified = {}
        return AccessRecord(
            anonymous=data.get("anonymous") is True,
            verified={k: float(v) for k, v in verified.items() if isinstance(v, int | float)},
        )


def repository_key(registry: str, repository: str) -> str:
    return f"{registry}/{repository}"


__all__ = ["AccessRecords", "repository_key"]
