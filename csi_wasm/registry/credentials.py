"""Registry credentials from a Kubernetes ``kubernetes.io/dockerconfigjson`` secret.

kubelet hands NodePublishVolume the secret's decoded values, so ``.dockerconfigjson``
arrives as JSON text::

    {"auths": {"ghcr.io": {"auth": "<base64 user:pass>"},
               "https://index.docker.io/v1/": {"username": "u", "password": "p"},
               "registry.example:5000": {"identitytoken": "<refresh token>"}}}

The legacy ``.dockercfg`` value is the inner mapping without ``"auths"``. Keys are
normalised to ``host[:port]`` so they compare equal to :attr:`Reference.registry`.
No error raised here ever contains secret content, and the JSON or base64
exception is not chained (a ``JSONDecodeError`` holds the whole document).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csi_wasm.errors import InvalidArgument
from csi_wasm.reference import DOCKER_HUB

__all__ = [
    "DOCKERCFG_KEY",
    "DOCKERCONFIGJSON_KEY",
    "Credentials",
    "Keychain",
    "keychain_from_file",
    "normalize_host",
]

DOCKERCONFIGJSON_KEY = ".dockerconfigjson"
DOCKERCFG_KEY = ".dockercfg"

_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

# Fingerprints are keyed with a per-process secret: equal credentials give equal
# fingerprints within this process, and a fingerprint reveals nothing offline.
_FINGERPRINT_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (OAuth2 refresh) token.

    The secret fields are left out of ``repr`` so the object is safe to log.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """A keyed sha256 hex digest identifying these credentials, never the secret."""
        material = json.dumps([self.username, self.password, self.identity_token])
        return hmac.new(_FINGERPRINT_KEY, material.encode("utf-8"), hashlib.sha256).hexdigest()

    @property
    def has_password(self) -> bool:
        return bool(self.username or self.password)


def normalize_host(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``https://h:5000/x`` -> ``h:5000``."""
    text = key.strip()
    scheme_end = text.find("://")
    if scheme_end >= 0:
        text = text[scheme_end + 3 :]
    host = text.split("/", 1)[0].lower()
    if host.endswith(":443") and host[:-4] in _HUB_ALIASES:
        host = host[:-4]
    return DOCKER_HUB if host in _HUB_ALIASES else host


class Keychain:
    """Credentials by registry host, as a pull needs them."""

    def __init__(self, entries: Mapping[str, Credentials] | None = None) -> None:
        self._entries: dict[str, Credentials] = {}
        for key, creds in (entries or {}).items():
            self._entries.setdefault(normalize_host(key), creds)

    def __repr__(self) -> str:
        return f"Keychain(registries={sorted(self._entries)!r})"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def registries(self) -> frozenset[str]:
        return frozenset(self._entries)

    def for_registry(self, host: str) -> Credentials | None:
        """The credentials for ``host`` (as in :attr:`Reference.registry`), if any."""
        return self._entries.get(normalize_host(host))

    @classmethod
    def from_secrets(cls, secrets_map: Mapping[str, str]) -> Keychain | None:
        """Build a keychain from NodePublishVolume secrets; ``None`` when none apply.

        ``.dockerconfigjson`` wins over the legacy ``.dockercfg``; other keys are ignored.
        """
        if DOCKERCONFIGJSON_KEY in secrets_map:
            document = _load_json(secrets_map[DOCKERCONFIGJSON_KEY], DOCKERCONFIGJSON_KEY)
            auths = document.get("auths", {})
            if not isinstance(auths, dict):
                raise InvalidArgument(
                    f"the secret's {DOCKERCONFIGJSON_KEY} has an 'auths' that is not an object; "
                    "recreate it with 'kubectl create secret docker-registry'"
                )
            return cls.from_auths(auths, DOCKERCONFIGJSON_KEY)
        if DOCKERCFG_KEY in secrets_map:
            document = _load_json(secrets_map[DOCKERCFG_KEY], DOCKERCFG_KEY)
            return cls.from_auths(document, DOCKERCFG_KEY)
        return None

    @classmethod
    def from_dockerconfigjson(cls, text: str) -> Keychain:
        """Parse the text of a ``~/.docker/config.json`` style document."""
        keychain = cls.from_secrets({DOCKERCONFIGJSON_KEY: text})
        assert keychain is not None
        return keychain

    @classmethod
    def from_auths(cls, auths: Mapping[str, Any], source: str = "auths") -> Keychain:
        """Build from the ``auths`` mapping: registry key -> entry object."""
        exact: dict[str, Credentials] = {}
        loose: dict[str, Credentials] = {}
        for key, entry in auths.items():
            creds = _parse_entry(key, entry, source)
            if creds is None:
                continue
            host = normalize_host(key)
            # A bare "host" key wins over URL-ish spellings of the same host.
            target = exact if key.strip().lower() == host else loose
            target.setdefault(host, creds)
        merged = dict(loose)
        merged.update(exact)
        return cls(merged)


def keychain_from_file(path: str, flag: str = "--docker-config") -> Keychain:
    """The credentials in a docker ``config.json`` (or a secret's ``.dockerconfigjson``).

    ValueError naming ``flag`` and the file, never its content, when unusable.
    """
    try:
        return Keychain.from_dockerconfigjson(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"{flag} {path}: {error.strerror}") from None
    except (InvalidArgument, UnicodeDecodeError) as error:
        reason = error.message if isinstance(error, InvalidArgument) else "not UTF-8 text"
        raise ValueError(f"{flag} {path}: {reason}") from None


def _load_json(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, RecursionError) as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f" ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise InvalidArgument(
            f"the secret's {source} is not valid JSON{where}; "
            "recreate it with 'kubectl create secret docker-registry'"
        ) from None
    if not isinstance(document, dict):
        raise InvalidArgument(
            f"the secret's {source} is not a JSON object; "
            "recreate it with 'kubectl create secret docker-registry'"
        )
    return document


def _parse_entry(key: str, entry: Any, source: str) -> Credentials | None:
    shown_key = repr(normalize_host(key)[:100])
    if not isinstance(entry, dict):
        raise InvalidArgument(
            f"the secret's {source} entry for {shown_key} is not an object; "
            "recreate it with 'kubectl create secret docker-registry'"
        )
    identity_token = _string_field(entry, "identitytoken", shown_key, source)
    auth = _string_field(entry, "auth", shown_key, source)
    username = _string_field(entry, "username", shown_key, source)
    password = _string_field(entry, "password", shown_key, source)
    if auth:
        username, password = _decode_auth(auth, shown_key, source)
    if not (username or password or identity_token):
        return None
    return Credentials(
        username=username or "",
        password=password or "",
        identity_token=identity_token or None,
    )


def _string_field(entry: dict[str, Any], name: str, shown_key: str, source: str) -> str | None:
    value = entry.get(name)
    if value is None or isinstance(value, str):
        return value
    raise InvalidArgument(
        f"the secret's {source} entry for {shown_key} has a non-string '{name}'; "
        "recreate it with 'kubectl create secret docker-registry'"
    )


def _decode_auth(auth: str, shown_key: str, source: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(auth.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        decoded = None
    if decoded is None or ":" not in decoded:
        raise InvalidArgument(
            f"the secret's {source} entry for {shown_key} has an 'auth' that is not base64 "
            "of 'username:password'; recreate it with 'kubectl create secret docker-registry'"
        )
    username, _, password = decoded.partition(":")
    return username, password
