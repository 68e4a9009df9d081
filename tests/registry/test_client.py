"""Tests of csi_wasm.registry.client: manifests and blobs, verified and bounded."""

from __future__ import annotations

import gzip
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import urllib3

from csi_wasm.deadline import Deadline
from csi_wasm.errors import (
    DeadlineExceeded,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from csi_wasm.reference import Reference, parse_reference
from csi_wasm.registry import Credentials, Keychain, RegistryClient, RegistryOptions

from .conftest import ClientFactory, Sleeps
from .fake_registry import (
    OCI_MANIFEST,
    Artifact,
    FakeServer,
    TokenService,
    close_delimited,
    error_json,
    json_reply,
    make_artifact,
    redirect,
    reply,
    require_bearer,
    serve_artifact,
    sha256_digest,
    stall,
    trickle,
    truncated,
)

REPO = "wasm/filter"
ARTIFACT = make_artifact()
BLOB_PATH = f"/v2/{REPO}/blobs/{ARTIFACT.blob_digest}"
MANIFEST_PATH = f"/v2/{REPO}/manifests/v1"
ACCEPT = [OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"]
LIMIT = 1 << 20


def deadline(seconds: float = 30) -> Deadline:
    return Deadline.after(seconds)


@pytest.fixture
def ref(fake: FakeServer) -> Reference:
    return Reference(fake.host, REPO, "v1")


@pytest.fixture
def client(fake: FakeServer, storage: FakeServer, make_client: ClientFactory) -> RegistryClient:
    return make_client(fake.host, storage.host)


def fetch(
    client: RegistryClient,
    ref: Reference,
    *,
    digest: str = ARTIFACT.blob_digest,
    size: int = len(ARTIFACT.blob),
    limit: int = LIMIT,
    seconds: float = 30,
    keychain: Keychain | None = None,
) -> bytes:
    dest = io.BytesIO()
    client.fetch_blob(ref, digest, size, dest, keychain, deadline(seconds), limit=limit)
    return dest.getvalue()


# -- manifests ----------------------------------------------------------------------


def test_manifest_by_tag(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    serve_artifact(fake, REPO, ARTIFACT)
    manifest = client.get_manifest(ref, None, deadline(), ACCEPT)
    assert manifest.body == ARTIFACT.manifest
    assert manifest.digest == ARTIFACT.manifest_digest
    assert manifest.media_type == OCI_MANIFEST
    (request,) = fake.requests_to(MANIFEST_PATH)
    assert request.headers["accept"] == ", ".join(ACCEPT)


def test_manifest_by_digest(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    serve_artifact(fake, REPO, ARTIFACT)
    pinned = ref.with_digest(ARTIFACT.manifest_digest)
    manifest = client.get_manifest(pinned, None, deadline(), ACCEPT)
    assert manifest.digest == ARTIFACT.manifest_digest
    assert fake.requests_to(f"/v2/{REPO}/manifests/{ARTIFACT.manifest_digest}")
    assert not fake.requests_to(MANIFEST_PATH)


def test_referrers_api(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    subject = ARTIFACT.manifest_digest
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "1" * 64}]}
    fake.route(f"/v2/{REPO}/referrers/{subject}", json_reply(index))
    assert json.loads(client.get_referrers(ref, subject, None, deadline()) or b"") == index
    (request,) = fake.requests_to(f"/v2/{REPO}/referrers/{subject}")
    assert request.headers["accept"] == "application/vnd.oci.image.index.v1+json"
    # no such API (OCI 1.1 says: use the fallback tag), unlike a registry failure
    other = "sha256:" + "2" * 64
    fake.route(f"/v2/{REPO}/referrers/{other}", reply(b"404 page not found", 404))
    assert client.get_referrers(ref, other, None, deadline()) is None
    failing = "sha256:" + "3" * 64
    fake.route(f"/v2/{REPO}/referrers/{failing}", reply(b"", 418))
    with pytest.raises(FailedPrecondition, match="HTTP 418 while listing the referrers"):
        client.get_referrers(ref, failing, None, deadline())


def test_gzip_encoded_manifest(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    encoded = gzip.compress(ARTIFACT.manifest)
    fake.route(
        MANIFEST_PATH,
        reply(encoded, headers={"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}),
    )
    manifest = client.get_manifest(ref, None, deadline(), ACCEPT)
    assert manifest.body == ARTIFACT.manifest
    assert manifest.digest == ARTIFACT.manifest_digest


def test_gzip_bomb_manifest_is_bounded(
    fake: FakeServer, make_client: ClientFactory, ref: Reference
) -> None:
    bomb = gzip.compress(b"{" + b" " * (64 << 20) + b"}")
    fake.route(MANIFEST_PATH, reply(bomb, headers={"Content-Encoding": "gzip"}))
    client = make_client(fake.host, max_manifest_bytes=4096)
    with pytest.raises(FailedPrecondition, match="too large"):
        client.get_manifest(ref, None, deadline(), ACCEPT)


def test_untagged_reference_asks_for_latest(fake: FakeServer, client: RegistryClient) -> None:
    serve_artifact(fake, REPO, ARTIFACT, tag="latest")
    client.get_manifest(Reference(fake.host, REPO), None, deadline(), ACCEPT)
    assert fake.requests_to(f"/v2/{REPO}/manifests/latest")


def test_manifest_digest_mismatch_when_pinned(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    other = sha256_digest(b"something else")
    fake.route(f"/v2/{REPO}/manifests/{other}", reply(ARTIFACT.manifest))
    with pytest.raises(DigestMismatch) as caught:
        client.get_manifest(ref.with_digest(other), None, deadline(), ACCEPT)
    assert ARTIFACT.manifest_digest in str(caught.value)
    assert isinstance(caught.value, FailedPrecondition)


def test_manifest_digest_mismatch_with_the_header(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(
        MANIFEST_PATH,
        reply(
            ARTIFACT.manifest,
            headers={
                "Content-Type": OCI_MANIFEST,
                "Docker-Content-Digest": sha256_digest(b"x"),
            },
        ),
    )
    with pytest.raises(DigestMismatch, match="announced"):
        client.get_manifest(ref, None, deadline(), ACCEPT)


def test_manifest_header_of_another_algorithm_is_not_compared(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(
        MANIFEST_PATH,
        reply(
            ARTIFACT.manifest,
            headers={"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha512:ab"},
        ),
    )
    assert client.get_manifest(ref, None, deadline(), ACCEPT).digest == ARTIFACT.manifest_digest


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (f"{OCI_MANIFEST}; charset=utf-8", OCI_MANIFEST),
        ("application/json", "application/vnd.example+json"),
        (None, "application/vnd.example+json"),
        ("text/plain", "application/vnd.example+json"),
    ],
)
def test_manifest_media_type(
    fake: FakeServer,
    client: RegistryClient,
    ref: Reference,
    content_type: str | None,
    expected: str,
) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    fake.route(MANIFEST_PATH, reply(body, headers=headers))
    assert client.get_manifest(ref, None, deadline(), ACCEPT).media_type == expected


def test_media_type_without_any_hint(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(
        MANIFEST_PATH, reply(b'{"schemaVersion": 2}', headers={"Content-Type": "application/json"})
    )
    assert client.get_manifest(ref, None, deadline(), ACCEPT).media_type == "application/json"


def test_tag_not_found(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    fake.route(MANIFEST_PATH, error_json(404, "MANIFEST_UNKNOWN"))
    with pytest.raises(NotFound) as caught:
        client.get_manifest(ref, None, deadline(), ACCEPT)
    assert f"tag 'v1' of {ref.name} was not found" in str(caught.value)
    assert len(fake.requests_to(MANIFEST_PATH)) == 1


def test_repository_not_found(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    fake.route(MANIFEST_PATH, error_json(404, "NAME_UNKNOWN"))
    with pytest.raises(NotFound, match=f"repository {REPO} was not found"):
        client.get_manifest(ref, None, deadline(), ACCEPT)


def test_digest_not_found(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    pinned = ref.with_digest(ARTIFACT.manifest_digest)
    fake.route(f"/v2/{REPO}/manifests/{ARTIFACT.manifest_digest}", reply(b"gone", status=404))
    with pytest.raises(NotFound, match=f"digest {ARTIFACT.manifest_digest}"):
        client.get_manifest(pinned, None, deadline(), ACCEPT)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>Sign in</body></html>", "text/html; charset=utf-8"),
        (b"{}", "text/html"),
        (b"not json at all", "application/json"),
        (b"[1, 2]", OCI_MANIFEST),
    ],
)
def test_non_json_manifest(
    fake: FakeServer, client: RegistryClient, ref: Reference, body: bytes, content_type: str
) -> None:
    fake.route(MANIFEST_PATH, reply(body, headers={"Content-Type": content_type}))
    with pytest.raises(FailedPrecondition) as caught:
        client.get_manifest(ref, None, deadline(), ACCEPT)
    assert "not a JSON manifest" in str(caught.value)
    assert str(ref) in str(caught.value)


def test_manifest_too_large_by_content_length(
    fake: FakeServer, make_client: ClientFactory, ref: Reference
) -> None:
    fake.route(MANIFEST_PATH, reply(b"{" + b" " * 2000 + b"}"))
    client = make_client(fake.host, max_manifest_bytes=1000)
    with pytest.raises(FailedPrecondition, match=r"manifest of .* is too large .2002 bytes"):
        client.get_manifest(ref, None, deadline(), ACCEPT)


def test_manifest_too_large_without_content_length(
    fake: FakeServer, make_client: ClientFactory, ref: Reference
) -> None:
    fake.route(MANIFEST_PATH, close_delimited(b"{" + b" " * 5000 + b"}"))
    client = make_client(fake.host, max_manifest_bytes=1000)
    with pytest.raises(FailedPrecondition, match=r"too large .more bytes"):
        client.get_manifest(ref, None, deadline(), ACCEPT)


def test_manifest_5xx_then_success(
    fake: FakeServer, client: RegistryClient, ref: Reference, sleeps: Sleeps
) -> None:
    serve_artifact(fake, REPO, ARTIFACT)
    good = fake.routes[("GET", MANIFEST_PATH)]
    fake.sequence(MANIFEST_PATH, reply(status=502), good)
    assert client.get_manifest(ref, None, deadline(), ACCEPT).digest == ARTIFACT.manifest_digest
    assert len(sleeps.calls) == 1


# -- blobs -----------------------------------------------------------------------------


def test_blob_with_progress(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB: more than one chunk
    artifact = make_artifact(blob)
    serve_artifact(fake, REPO, artifact)
    seen: list[int] = []
    dest = io.BytesIO()
    client.fetch_blob(
        ref, artifact.blob_digest, len(blob), dest, None, deadline(),
        limit=4 << 20, progress=seen.append,
    )  # fmt: skip
    assert dest.getvalue() == blob
    assert seen == sorted(seen) and seen[-1] == len(blob)
    (request,) = fake.requests_to(f"/v2/{REPO}/blobs/{artifact.blob_digest}")
    assert request.headers["accept-encoding"] == "identity"


def test_blob_declared_too_large_is_refused_without_a_request(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        fetch(client, ref, size=LIMIT + 1)
    assert "too large" in str(caught.value)
    assert "raise --max-module-bytes" in str(caught.value)
    assert fake.requests == []


def test_blob_content_length_over_the_limit(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(BLOB_PATH, reply(b"x" * 2000))
    with pytest.raises(FailedPrecondition, match="raise --max-module-bytes"):
        fetch(client, ref, limit=1000, size=len(ARTIFACT.blob))


def test_blob_content_length_over_the_declared_size(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(BLOB_PATH, reply(ARTIFACT.blob + b"extra"))
    with pytest.raises(FailedPrecondition, match=r"announced .* but its manifest declares"):
        fetch(client, ref)


def test_blob_body_larger_than_declared(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(BLOB_PATH, close_delimited(ARTIFACT.blob + b"x" * 100_000))
    with pytest.raises(FailedPrecondition, match=r"sent more than the .* bytes the manifest"):
        fetch(client, ref)


def test_blob_truncated_with_content_length(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(BLOB_PATH, truncated(ARTIFACT.blob[:50], declared=len(ARTIFACT.blob)))
    with pytest.raises(Unavailable, match="before the body was complete"):
        fetch(client, ref)


def test_blob_truncated_without_content_length(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(BLOB_PATH, close_delimited(ARTIFACT.blob[:50]))
    with pytest.raises(Unavailable, match=f"ended after 50 of {len(ARTIFACT.blob)} bytes"):
        fetch(client, ref)


def test_blob_digest_mismatch(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    tampered = bytes([ARTIFACT.blob[0] ^ 1]) + ARTIFACT.blob[1:]
    fake.route(BLOB_PATH, reply(tampered))
    with pytest.raises(DigestMismatch) as caught:
        fetch(client, ref)
    assert sha256_digest(tampered) in str(caught.value)


def test_blob_not_found(fake: FakeServer, client: RegistryClient, ref: Reference) -> None:
    fake.route(BLOB_PATH, error_json(404, "BLOB_UNKNOWN"))
    with pytest.raises(NotFound, match="not found"):
        fetch(client, ref)
    assert len(fake.requests_to(BLOB_PATH)) == 1


def test_blob_with_an_invalid_digest(client: RegistryClient, ref: Reference) -> None:
    with pytest.raises(InvalidArgument, match="only sha256"):
        fetch(client, ref, digest="sha512:" + "0" * 128)


def test_trickle_is_cut_off_by_the_deadline(
    fake: FakeServer, make_client: ClientFactory, ref: Reference
) -> None:
    size = 1 << 20
    fake.route(BLOB_PATH, trickle(b"\x00asm", declared=size, interval=0.01))
    client = make_client(fake.host, read_timeout=30)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        fetch(client, ref, size=size, seconds=0.5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3, elapsed
    assert str(ref) in str(caught.value)
    assert "--pull-timeout" in str(caught.value)


def test_stall_is_cut_off_by_the_deadline(
    fake: FakeServer, make_client: ClientFactory, ref: Reference
) -> None:
    size = 1 << 20
    fake.route(BLOB_PATH, stall(b"\x00asm", declared=size))
    client = make_client(fake.host, read_timeout=30)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        fetch(client, ref, size=size, seconds=0.5)
    assert time.monotonic() - started < 3


def test_stall_shorter_than_the_deadline_hits_the_read_timeout(
    fake: FakeServer, make_client: ClientFactory, ref: Reference
) -> None:
    size = 1 << 20
    fake.route(BLOB_PATH, stall(b"\x00asm", declared=size))
    client = make_client(fake.host, read_timeout=0.2)
    with pytest.raises(Unavailable, match="stopped sending data"):
        fetch(client, ref, size=size, seconds=30)


def test_blob_redirected_to_storage_with_bearer_auth(
    fake: FakeServer, storage: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    tokens = TokenService(username="user", password="pw")
    fake.route("/token", tokens.handle)
    fake.route(
        BLOB_PATH,
        require_bearer(
            tokens.valid,
            f"{fake.url}/token",
            "fake",
            f"repository:{REPO}:pull",
            redirect(f"{storage.url}/bucket/blob?sig=abc"),
        ),
    )
    storage.route("/bucket/blob", reply(ARTIFACT.blob))
    creds = Keychain({fake.host: Credentials("user", "pw")})
    assert fetch(client, ref, keychain=creds) == ARTIFACT.blob
    assert [r.authorization for r in fake.requests_to(BLOB_PATH)] == [None, "Bearer tok-1"]
    (at_storage,) = storage.requests_to("/bucket/blob")
    assert at_storage.authorization is None


def test_storage_refusing_a_redirected_download(
    fake: FakeServer, storage: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(BLOB_PATH, redirect(f"{storage.url}/bucket/blob?sig=expired"))
    storage.route("/bucket/blob", reply(b"<Error>AccessDenied</Error>", status=403))
    with pytest.raises(Unavailable) as caught:
        fetch(client, ref)
    assert f"storage host {storage.host} refused" in str(caught.value)
    assert "expired" not in str(caught.value)


def test_registry_403_is_permission_denied(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(MANIFEST_PATH, error_json(403, "DENIED"))
    with pytest.raises(PermissionDenied, match="requires credentials"):
        client.get_manifest(ref, None, deadline(), ACCEPT)
    creds = Keychain({fake.host: Credentials("u", "p")})
    with pytest.raises(PermissionDenied, match="refused the credentials"):
        client.get_manifest(ref, creds, deadline(), ACCEPT)


def test_other_4xx_is_failed_precondition(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    fake.route(MANIFEST_PATH, json_reply({}, status=400))
    with pytest.raises(FailedPrecondition, match="HTTP 400"):
        client.get_manifest(ref, None, deadline(), ACCEPT)


# -- Docker Hub, via a session seam --------------------------------------------------


class _RecordingSession(requests.Session):
    """Answers every request with one canned manifest and records the URLs."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.urls: list[str] = []

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.urls.append(str(url))
        response = requests.Response()
        response.status_code = 200
        response.url = str(url)
        response.headers["Content-Type"] = OCI_MANIFEST
        response.raw = urllib3.HTTPResponse(io.BytesIO(self.body), preload_content=False)
        return response


def test_docker_hub_names_go_to_registry_1() -> None:
    session = _RecordingSession(ARTIFACT.manifest)
    client = RegistryClient(RegistryOptions(), session=session)
    manifest = client.get_manifest(parse_reference("nginx"), None, deadline(), ACCEPT)
    assert manifest.digest == ARTIFACT.manifest_digest
    assert session.urls == ["https://registry-1.docker.io/v2/library/nginx/manifests/latest"]
    client.close()  # a session passed in stays open: still usable
    client.get_manifest(parse_reference("index.docker.io/acme/f:v2"), None, deadline(), ACCEPT)
    assert session.urls[-1] == "https://registry-1.docker.io/v2/acme/f/manifests/v2"


def test_one_client_serves_concurrent_pulls(
    fake: FakeServer, client: RegistryClient, ref: Reference
) -> None:
    tokens = TokenService(expires_in=300)
    fake.route("/token", tokens.handle)
    scope = f"repository:{REPO}:pull"
    blobs = [make_artifact(bytes([i]) * (100_000 + i)) for i in range(8)]
    for artifact in blobs:
        fake.route(
            f"/v2/{REPO}/blobs/{artifact.blob_digest}",
            require_bearer(tokens.valid, f"{fake.url}/token", "fake", scope, reply(artifact.blob)),
        )

    def pull(artifact: Artifact) -> bytes:
        return fetch(client, ref, digest=artifact.blob_digest, size=len(artifact.blob))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(pull, blobs))
    assert results == [artifact.blob for artifact in blobs]
    assert 1 <= len(tokens.issued) <= len(blobs)
