"""The kubernetes client pointed at a fake API server (support.apiserver): directly
(:func:`core_v1_api`) or through the in-cluster configuration, for tests of code that
builds its client from the environment (csi_wasm.kube.events, csi_wasm.kube.configmap)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.config import incluster_config

import csi_wasm
from support.apiserver import TlsFiles, self_signed


def core_v1_api(url: str, token: str, **settings: Any) -> object:
    """A ``CoreV1Api`` on ``url`` with a bearer ``token``; ``settings`` set on its
    Configuration (e.g. ``retries=0``)."""
    configuration = client.Configuration(
        host=url,
        api_key={"BearerToken": token},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    for name, value in settings.items():
        setattr(configuration, name, value)
    api: object = client.CoreV1Api(client.ApiClient(configuration))
    return api


def service_account(monkeypatch: pytest.MonkeyPatch, directory: Path, token: str) -> TlsFiles:
    """A pod's service account: ``token`` and a CA trusting the returned certificate (for
    a fake API server's ``tls=``); point the environment at it with :func:`at_api_server`."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for the fake API server's certificate")
    tls = self_signed(directory)
    token_file = directory / "token"
    token_file.write_text(token)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token_file))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tls.cert))
    return tls


def at_api_server(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))


def broken_in_cluster_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster's environment without its service account files."""
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.skip("running in a pod: the in-cluster config would work")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")


def imports_kubernetes(modules: str) -> bool:
    """Whether importing ``modules`` (``a, b``) in a fresh interpreter loads the client."""
    code = f"import sys, {modules}\nprint('kubernetes' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(csi_wasm.__file__).parents[1],
    )
    return result.stdout.strip() == "True"
