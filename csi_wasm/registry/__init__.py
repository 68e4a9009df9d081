"""Our own thin OCI registry client for the pull path.

Why not oras-py or python-dxf: oras-py has no timeouts and sleeps ~131 s in retries
on a dead host, does not verify blob digests and raises bare ``ValueError``;
python-dxf refuses auth over plain http and has no deadline. ``requests`` costs
0.20 s CPU for a 64 MiB streamed pull with sha256, against 0.47 s for httpx.

Modules: :mod:`.credentials` (dockerconfigjson -> :class:`Keychain`),
:mod:`.auth` (challenges, Basic, token auth and cache), :mod:`.transport`
(timeouts, retries, 429, redirects, TLS), :mod:`.client` (manifests and blobs),
:mod:`.upload` (pushing blobs and manifests, for ``csi-wasm push``).
"""

from csi_wasm.registry.client import Manifest, RegistryClient
from csi_wasm.registry.credentials import Credentials, Keychain
from csi_wasm.registry.http_source import HttpSourceClient, display_url
from csi_wasm.registry.options import RegistryOptions
from csi_wasm.registry.upload import RegistryUploader

__all__ = [
    "Credentials",
    "HttpSourceClient",
    "Keychain",
    "Manifest",
    "RegistryClient",
    "RegistryOptions",
    "RegistryUploader",
    "display_url",
]
