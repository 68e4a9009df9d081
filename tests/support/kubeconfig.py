"""A kubeconfig file for the tests' own API server (support.apiserver), as kubectl writes one."""

from __future__ import annotations

import json
from pathlib import Path

KUBECONFIG_TOKEN = "kubeconfig-token-3a9c"


def write_kubeconfig(path: Path, server: str, token: str = KUBECONFIG_TOKEN) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "driver", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "driver"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config))
    return path
