"""The registry client against a real ``docker-registry`` (distribution), anonymous and Basic.

Modules are pushed with the independent test pusher (``support.oci``), so these tests
check our client against something it did not write.
"""

from __future__ import annotations

import io
import json

import pytest
from support.oci import OCI_MANIFEST, PushedModule, push_wasm_artifact
from support.registry import Registry
from support.wasm import make_module

from csi_wasm.deadline import Deadline
from csi_wasm.errors import NotFound, PermissionDenied
from csi_wasm.reference import Reference, parse_reference
from csi_wasm.registry import Credentials, Keychain, RegistryClient, RegistryOptions

ACCEPT = [OCI_MANIFEST]


def client_for(reg: Registry) -> RegistryClient:
    return RegistryClient(RegistryOptions(insecure_registries=frozenset({reg.host})))


def pull(client: RegistryClient, ref: Reference, keychain: Keychain | None) -> tuple[str, bytes]:
    deadline = Deadline.after(60)
    manifest = client.get_manifest(ref, keychain, deadline, ACCEPT)
    layer = json.loads(manifest.body)["layers"][0]
    dest = io.BytesIO()
    client.fetch_blob(ref, layer["digest"], layer["size"], dest, keychain, deadline, limit=16 << 20)
    return manifest.digest, dest.getvalue()


def check(pushed: PushedModule, module: bytes, digest: str, blob: bytes) -> None:
    assert digest == pushed.manifest_digest
    assert blob == module


def test_anonymous_pull(registry: Registry, unique_repo: str) -> None:
    module = make_module(300_000, unique_repo)
    pushed = push_wasm_artifact(registry, unique_repo, "v1", module)
    with client_for(registry) as client:
        ref = parse_reference(pushed.reference)
        check(pushed, module, *pull(client, ref, None))
        check(pushed, module, *pull(client, parse_reference(pushed.digest_reference), None))
        with pytest.raises(NotFound, match="tag 'v2'"):
            client.get_manifest(
                parse_reference(f"{registry.host}/{unique_repo}:v2"),
                None,
                Deadline.after(30),
                ACCEPT,
            )


def test_basic_auth_pull(auth_registry: Registry, unique_repo: str) -> None:
    module = make_module(10_000, unique_repo)
    pushed = push_wasm_artifact(auth_registry, unique_repo, "v1", module)
    ref = parse_reference(pushed.reference)
    username, password = auth_registry.credentials
    with client_for(auth_registry) as client:
        with pytest.raises(PermissionDenied, match="requires credentials"):
            client.get_manifest(ref, None, Deadline.after(30), ACCEPT)

        wrong = Keychain({auth_registry.host: Credentials(username, password + "x")})
        with pytest.raises(PermissionDenied, match="refused the credentials") as caught:
            client.get_manifest(ref, wrong, Deadline.after(30), ACCEPT)
        assert password not in str(caught.value)

        right = Keychain({auth_registry.host: Credentials(username, password)})
        check(pushed, module, *pull(client, ref, right))
