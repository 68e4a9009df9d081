"""Settings of the registry client, grouped in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from csi_wasm import __version__

__all__ = ["DEFAULT_USER_AGENT", "RegistryOptions"]

DEFAULT_USER_AGENT = f"csi-wasm/{__version__}"


@dataclass(frozen=True)
class RegistryOptions:
    """How the client talks to registries.

    ``insecure_registries`` holds ``host`` or ``host:port`` entries reached over plain
    http; a bare ``host`` covers every port of that host. ``ca_file`` is a PEM bundle
    used instead of the system CAs to verify TLS. Timeouts are per request and are
    always clipped to what is left of the pull's deadline. A host in ``mirror_hosts``
    (a ``--registry-mirror`` target) gets one attempt and ``mirror_timeout`` seconds to
    connect and to start answering: the pull falls back to the source after that.
    """

    insecure_registries: frozenset[str] = frozenset()
    ca_file: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_retries: int = 3
    mirror_hosts: frozenset[str] = frozenset()
    mirror_timeout: float = 5.0
    max_manifest_bytes: int = 4 * 1024 * 1024
    user_agent: str = DEFAULT_USER_AGENT
