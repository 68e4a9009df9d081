"""Where the driver reaches the Kubernetes API: a kubeconfig file, or its service account.

As every Kubernetes component: ``--kubeconfig FILE`` (or ``KUBECONFIG``) when given,
e.g. a driver run outside the cluster; otherwise the in-cluster configuration (the
pod's service account token and CA). The ``kubernetes`` client is imported only
here, when an API is wanted: it is large.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csi_wasm import __version__


def reachable(kubeconfig: Path | None) -> bool:
    """True when there is an API to try: a kubeconfig, or a cluster around us."""
    return kubeconfig is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def where(kubeconfig: Path | None) -> str:
    """How logs name the configuration in use."""
    return f"kubeconfig {kubeconfig}" if kubeconfig is not None else "the in-cluster config"


def api_client(kubeconfig: Path | None) -> Any:
    """A ``kubernetes.client.ApiClient``; raises when the configuration cannot be loaded."""
    from kubernetes import client, config  # noqa: PLC0415

    configuration = client.Configuration()
    if kubeconfig is not None:
        load_file: Callable[..., None] = config.load_kube_config  # untyped in the client
        load_file(config_file=os.fspath(kubeconfig), client_configuration=configuration)
    else:
        load: Callable[..., None] = config.load_incluster_config  # untyped in the client
        load(client_configuration=configuration)
    # One retry covers a stale keep-alive connection; callers retry with their own backoff.
    configuration.retries = 1
    api = client.ApiClient(configuration)
    api.user_agent = f"csi-wasm/{__version__}"
    return api


def core_v1(kubeconfig: Path | None) -> Any:
    """A ``kubernetes.client.CoreV1Api`` (see :func:`api_client`)."""
    from kubernetes import client  # noqa: PLC0415

    return client.CoreV1Api(api_client(kubeconfig))


def core_v1_or_warn(kubeconfig: Path | None, log: logging.Logger, off: str) -> Any | None:
    """:func:`core_v1`, or None when the configuration cannot be loaded: ``log`` then warns
    that it cannot reach the API and what is ``off`` (e.g. "pod events are off")."""
    try:
        return core_v1(kubeconfig)
    except Exception as error:
        log.warning(
            f"cannot use {where(kubeconfig)} to reach the Kubernetes API: {off}",
            extra={"fields": {"error": f"{type(error).__name__}: {str(error)[:200]}"}},
        )
        return None
