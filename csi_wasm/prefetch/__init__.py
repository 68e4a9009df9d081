"""Prefetch: the admin's list of modules, pulled on every node before a pod asks.

The list comes from ``--prefetch`` flags (static) and, in a cluster, the ConfigMap the
Helm chart renders (dynamic, followed by :mod:`csi_wasm.kube.configmap`).
"""

from csi_wasm.prefetch.entries import (
    DEFAULT_KEY,
    PrefetchEntry,
    parse_prefetch_flag,
    parse_prefetch_list,
)
from csi_wasm.prefetch.prefetcher import Prefetcher

__all__ = [
    "DEFAULT_KEY",
    "PrefetchEntry",
    "Prefetcher",
    "parse_prefetch_flag",
    "parse_prefetch_list",
]
