"""Tests of csi_wasm.registry.upload: blobs and manifests pushed to real and scripted registries."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.oci import get_blob, get_manifest
from support.registry import Registry

from csi_wasm.deadline import Deadline
from csi_wasm.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from csi_wasm.reference import Reference, parse_reference
from csi_wasm.registry import Credentials, Keychain, RegistryClient, RegistryOptions
from csi_wasm.registry.upload import RegistryUploader, sha256_digest

from .fake_registry import (
    Exchange,
    FakeServer,
    Handler,
    TokenService,
    error_json,
    reply,
    require_bearer,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOB = b"\0asm\x01\0\0\0" + bytes(range(200))


def deadline() -> Deadline:
    return Deadline.after(30)


@pytest.fixture
def client(registry: Registry, auth_registry: Registry) -> Iterator[RegistryClient]:
    options = RegistryOptions(insecure_registries=frozenset({registry.host, auth_registry.host}))
    with RegistryClient(options) as made:
        yield made


def manifest_of(*blobs: bytes) -> bytes:
    config, *layers = blobs

    def descriptor(data: bytes, kind: str) -> dict[str, object]:
        return {"mediaType": kind, "digest": sha256_digest(data), "size": len(data)}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, "application/vnd.wasm.config.v0+json"),
            "layers": [descriptor(layer, "application/wasm") for layer in layers],
        }
    ).encode()


def test_push_blob_then_skip_it(
    client: RegistryClient, registry: Registry, unique_repo: str
) -> None:
    ref = parse_reference(f"{registry.host}/{unique_repo}:v1")
    uploader = RegistryUploader(client, None)
    mark = registry.mark()
    assert uploader.push_blob(ref, BLOB, deadline()) is True
    assert get_blob(registry, unique_repo, sha256_digest(BLOB)) == BLOB
    assert uploader.push_blob(ref, BLOB, deadline()) is False  # HEAD said it is there
    uploads = rf"/v2/{unique_repo}/blobs/uploads/.*"
    assert registry.requests_matching("POST", uploads, since=mark) == 1
    assert registry.requests_matching("PUT", uploads, since=mark) == 1
    assert registry.requests_matching("HEAD", rf"/v2/{unique_repo}/blobs/.+", since=mark) == 2


def test_push_manifest_by_tag(client: RegistryClient, registry: Registry, unique_repo: str) -> None:
    ref = parse_reference(f"{registry.host}/{unique_repo}:v2")
    uploader = RegistryUploader(client, None)
    config = b"{}"
    for blob in (config, BLOB):
        uploader.push_blob(ref, blob, deadline())
    body = manifest_of(config, BLOB)
    digest = uploader.push_manifest(ref, body, OCI_MANIFEST, deadline())
    assert digest == sha256_digest(body)
    assert get_manifest(registry, unique_repo, "v2").content == body


def test_registry_refusal_names_its_error_code(
    client: RegistryClient, registry: Registry, unique_repo: str
) -> None:
    ref = parse_reference(f"{registry.host}/{unique_repo}:v1")
    body = manifest_of(b"{}", b"never uploaded")
    with pytest.raises(FailedPrecondition) as refused:
        RegistryUploader(client, None).push_manifest(ref, body, OCI_MANIFEST, deadline())
    assert "HTTP 400 (MANIFEST_BLOB_UNKNOWN" in refused.value.message
    assert f"while pushing the manifest of {ref}" in refused.value.message


def test_a_digest_reference_is_not_a_push_target(
    client: RegistryClient, registry: Registry
) -> None:
    ref = parse_reference(f"{registry.host}/t/x@{sha256_digest(b'x')}")
    with pytest.raises(InvalidArgument, match="needs a tag"):
        RegistryUploader(client, None).push_manifest(ref, b"{}", OCI_MANIFEST, deadline())


def test_basic_auth_registry(
    client: RegistryClient, auth_registry: Registry, unique_repo: str
) -> None:
    ref = parse_reference(f"{auth_registry.host}/{unique_repo}:v1")
    user, password = auth_registry.credentials
    good = Keychain({auth_registry.host: Credentials(user, password)})
    assert RegistryUploader(client, good).push_blob(ref, BLOB, deadline())
    assert get_blob(auth_registry, unique_repo, sha256_digest(BLOB)) == BLOB

    with pytest.raises(PermissionDenied) as missing:
        RegistryUploader(client, None).push_blob(ref, b"other", deadline())
    assert "requires credentials to push" in missing.value.message
    assert "--docker-config" in missing.value.message

    bad = Keychain({auth_registry.host: Credentials(user, "wrong-password")})
    with pytest.raises(PermissionDenied) as refused:
        RegistryUploader(client, bad).push_blob(ref, b"other", deadline())
    assert "refused the credentials from --docker-config" in refused.value.message
    assert "wrong-password" not in refused.value.message


# -- Docker token auth and upload sessions, scripted ------------------------------------

REPO = "wasm/pushed"


class ScriptedRegistry:
    """Token auth for ``pull,push`` and a registry that keeps what is uploaded."""

    def __init__(self, fake: FakeServer, tokens: TokenService, *, announce: str | None = None):
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.announce = announce
        realm = f"{fake.url}/token"
        fake.route("/token", tokens.handle)
        scope = f"repository:{REPO}:pull,push"

        def auth(inner: Handler) -> Handler:
            return require_bearer(tokens.valid, realm, "fake-registry", scope, inner)

        blob = f"/v2/{REPO}/blobs/{sha256_digest(BLOB)}"
        fake.route(blob, auth(self.head_blob), method="HEAD")
        fake.route(f"/v2/{REPO}/blobs/uploads/", auth(self.start_upload), method="POST")
        fake.route(f"/v2/{REPO}/blobs/uploads/session-1", auth(self.finish_upload), method="PUT")
        fake.route(f"/v2/{REPO}/manifests/v1", auth(self.put_manifest), method="PUT")

    def head_blob(self, exchange: Exchange) -> None:
        status = 200 if sha256_digest(BLOB) in self.blobs else 404
        exchange.reply(status)

    def start_upload(self, exchange: Exchange) -> None:
        # A relative Location with a query of its own, as distribution sends (_state=...).
        exchange.reply(202, headers={"Location": "session-1?_state=abc"})

    def finish_upload(self, exchange: Exchange) -> None:
        query = exchange.request.query
        assert query["_state"] == ["abc"]
        (digest,) = query["digest"]
        if sha256_digest(exchange.request.body) != digest:
            error_json(400, "DIGEST_INVALID")(exchange)
            return
        self.blobs[digest] = exchange.request.body
        exchange.reply(201)

    def put_manifest(self, exchange: Exchange) -> None:
        body = exchange.request.body
        self.manifests[exchange.request.headers["content-type"]] = body
        reply(b"", 201, {"Docker-Content-Digest": self.announce or sha256_digest(body)})(exchange)


def test_token_auth_asks_for_pull_and_push(fake: FakeServer) -> None:
    tokens = TokenService(username="user", password="s3cret")
    scripted = ScriptedRegistry(fake, tokens)
    ref = Reference(fake.host, REPO, "v1")
    keychain = Keychain({fake.host: Credentials("user", "s3cret")})
    with RegistryClient(RegistryOptions(insecure_registries=frozenset({fake.host}))) as client:
        uploader = RegistryUploader(client, keychain)
        assert uploader.push_blob(ref, BLOB, deadline())
        assert not uploader.push_blob(ref, BLOB, deadline())
        digest = uploader.push_manifest(ref, b'{"x": 1}', OCI_MANIFEST, deadline())
    assert scripted.blobs == {sha256_digest(BLOB): BLOB}
    assert scripted.manifests == {OCI_MANIFEST: b'{"x": 1}'}
    assert digest == sha256_digest(b'{"x": 1}')
    token_requests = fake.requests_to("/token")
    assert len(token_requests) == 1  # one token, reused for every request of the push
    assert token_requests[0].query["scope"] == [f"repository:{REPO}:pull,push"]


def test_a_manifest_stored_under_another_digest_is_reported(fake: FakeServer) -> None:
    ScriptedRegistry(fake, TokenService(), announce=sha256_digest(b"something else"))
    ref = Reference(fake.host, REPO, "v1")
    options = RegistryOptions(insecure_registries=frozenset({fake.host}))
    with (
        RegistryClient(options) as client,
        pytest.raises(FailedPrecondition, match="a proxy altered it"),
    ):
        RegistryUploader(client, None).push_manifest(ref, b"{}", OCI_MANIFEST, deadline())


def test_an_upload_on_another_host_gets_no_credentials(
    fake: FakeServer, storage: FakeServer
) -> None:
    tokens = TokenService(username="user", password="s3cret")
    ScriptedRegistry(fake, tokens)

    def elsewhere(exchange: Exchange) -> None:
        exchange.reply(202, headers={"Location": f"{storage.url}/upload/1"})

    fake.route(f"/v2/{REPO}/blobs/uploads/", elsewhere, method="POST")
    storage.route("/upload/1", lambda exchange: exchange.reply(201), method="PUT")
    ref = Reference(fake.host, REPO, "v1")
    keychain = Keychain({fake.host: Credentials("user", "s3cret")})
    options = RegistryOptions(insecure_registries=frozenset({fake.host, storage.host}))
    with RegistryClient(options) as client:
        assert RegistryUploader(client, keychain).push_blob(ref, BLOB, deadline())
    (put,) = storage.requests_to("/upload/1")
    assert put.authorization is None
    assert put.body == BLOB
    assert put.query["digest"] == [sha256_digest(BLOB)]


def test_an_upload_opened_without_a_location_is_reported(fake: FakeServer) -> None:
    fake.route(f"/v2/{REPO}/blobs/{sha256_digest(BLOB)}", reply(b"", 404), method="HEAD")
    fake.route(f"/v2/{REPO}/blobs/uploads/", reply(b"", 202), method="POST")
    ref = Reference(fake.host, REPO, "v1")
    options = RegistryOptions(insecure_registries=frozenset({fake.host}))
    with (
        RegistryClient(options) as client,
        pytest.raises(FailedPrecondition, match="opened an upload without a Location") as error,
    ):
        RegistryUploader(client, None).push_blob(ref, BLOB, deadline())
    assert "proxy" in error.value.message
