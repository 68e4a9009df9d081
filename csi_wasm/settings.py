"""Settings of a running driver, grouped by the part that uses them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from csi_wasm.verify.abi import Abi

DEFAULT_DRIVER_NAME = "wasm.csi.dev"
DEFAULT_MAX_MODULE_BYTES = 256 * 1024 * 1024
DEFAULT_PULL_TIMEOUT_SECONDS = 600.0
DEFAULT_CACHE_MAX_BYTES = 5 * 1024**3
DEFAULT_CACHE_TTL_SECONDS = 7 * 24 * 3600.0
DEFAULT_GC_INTERVAL_SECONDS = 600.0
DEFAULT_PREFETCH_REFRESH_SECONDS = 3600.0
DEFAULT_CATALOG_GRACE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class PullSettings:
    """How modules are fetched."""

    insecure_registries: frozenset[str] = frozenset()
    registry_ca: str | None = None
    max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES
    pull_timeout: float = DEFAULT_PULL_TIMEOUT_SECONDS
    registry_mirrors: tuple[str, ...] = ()  # SOURCE=MIRROR[/PREFIX], parsed at start-up
    docker_config: str | None = None
    credential_recheck: float = 3600.0
    default_abi: Abi = Abi.PROXY_WASM  # for volumes without an `abi` attribute


@dataclass(frozen=True)
class VerifySettings:
    """Which signatures modules must carry (see :mod:`csi_wasm.verify.policy`)."""

    keys: tuple[str, ...] = ()  # --verify-key NAME=PATH, loaded at start-up
    policy: str | None = None  # --verify-policy FILE
    unmatched_deny: bool = False  # --verify-unmatched deny


@dataclass(frozen=True)
class CacheSettings:
    """How the module cache is kept bounded (see :mod:`csi_wasm.cache.gc`)."""

    max_bytes: int = DEFAULT_CACHE_MAX_BYTES  # unused modules are evicted above this
    ttl: float = DEFAULT_CACHE_TTL_SECONDS  # and when unused for longer than this
    gc_interval: float = DEFAULT_GC_INTERVAL_SECONDS


@dataclass(frozen=True)
class NodeSettings:
    """Who this node is and where things live on it."""

    node_id: str
    root: Path = Path("/var/lib/csi-wasm")
    kubelet_dir: Path = Path("/var/lib/kubelet")
    driver_name: str = DEFAULT_DRIVER_NAME

    @property
    def pods_dir(self) -> Path:
        return self.kubelet_dir / "pods"


@dataclass(frozen=True)
class ServeSettings:
    """Everything `csi-wasm serve` needs."""

    node: NodeSettings
    pull: PullSettings = field(default_factory=PullSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    prefetch: tuple[str, ...] = ()  # --prefetch values, checked by the CLI
    prefetch_configmap: str | None = None  # NAMESPACE/NAME of the list to watch
    prefetch_file: Path | None = None  # the same JSON list in a file, re-read when it changes
    prefetch_refresh: float = DEFAULT_PREFETCH_REFRESH_SECONDS  # tags re-resolved this often
    catalog_grace: float = DEFAULT_CATALOG_GRACE_SECONDS  # unlisted modules kept in sha256/
    kubeconfig: Path | None = None  # reach the API from outside a cluster; else in-cluster
    endpoint: str = "unix:///csi/csi.sock"
    metrics_address: str = ":9090"
    log_level: str = "info"
