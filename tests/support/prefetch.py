"""Values the prefetch tests (list, prefetcher, ConfigMap watcher) share."""

from __future__ import annotations

HEX_A = "a" * 64
HEX_B = "b" * 64
HEX_C = "c" * 64
HEX_D = "d" * 64
SIGNATURE = "sig-8d7c6b5a"  # in a signed URL's query: never logged

A = "ghcr.io/acme/a:v1"
B = "ghcr.io/acme/b:v1"
LATEST = "ghcr.io/acme/c"  # no tag: latest, pull policy Always
PINNED = f"ghcr.io/acme/d@sha256:{HEX_D}"
