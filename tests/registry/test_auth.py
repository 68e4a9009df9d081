"""Tests of csi_wasm.registry.auth: challenges, Basic, token flow and token cache."""

from __future__ import annotations

import base64
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csi_wasm.deadline import Deadline
from csi_wasm.errors import FailedPrecondition, PermissionDenied
from csi_wasm.reference import Reference
from csi_wasm.registry import Credentials, Keychain
from csi_wasm.registry.auth import (
    Challenge,
    TokenCache,
    basic_authorization,
    parse_www_authenticate,
)

from .conftest import ClientFactory, FakeClock
from .fake_registry import (
    OCI_MANIFEST,
    Exchange,
    FakeServer,
    Handler,
    TlsFiles,
    TokenService,
    json_reply,
    make_artifact,
    require_basic,
    require_bearer,
    serve_artifact,
)

REPO = "wasm/filter"
SECRET = "pa55-w0rd-xyz"
ARTIFACT = make_artifact()
MANIFEST_PATH = f"/v2/{REPO}/manifests/v1"


def deadline() -> Deadline:
    return Deadline.after(30)


def keychain(host: str, creds: Credentials) -> Keychain:
    return Keychain({host: creds})


# -- WWW-Authenticate ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull,push",
                    },
                )
            ],
        ),
        (
            'BEARER Realm = "https://a/t" , Service=reg, error="insufficient_scope"',
            [
                Challenge(
                    "bearer",
                    {"realm": "https://a/t", "service": "reg", "error": "insufficient_scope"},
                )
            ],
        ),
        (
            'Basic realm="a, b", Bearer realm="https://x/t",service="s"',
            [
                Challenge("basic", {"realm": "a, b"}),
                Challenge("bearer", {"realm": "https://x/t", "service": "s"}),
            ],
        ),
        (r'Basic realm="say \"hi\" \\ ok"', [Challenge("basic", {"realm": 'say "hi" \\ ok'})]),
        ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
        ("Negotiate", [Challenge("negotiate", {})]),
        ("", []),
        ("Basic realm=x, ", [Challenge("basic", {"realm": "x"})]),
        ('=x, "y", realm="orphan"', []),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


@given(st.one_of(st.text(), st.text(alphabet=' \t,="\\Bearbasicrealm')))
@settings(max_examples=500)
def test_parse_www_authenticate_never_raises(header: str) -> None:
    for challenge in parse_www_authenticate(header):
        assert challenge.scheme == challenge.scheme.lower()
        assert challenge.scheme


def test_basic_authorization() -> None:
    header = basic_authorization(Credentials("user", "p:w"))
    assert header == "Basic " + base64.b64encode(b"user:p:w").decode()


# -- token cache ----------------------------------------------------------------------


def test_token_cache_expiry_with_margin(clock: FakeClock) -> None:
    cache = TokenCache(clock)
    key = ("r", "repository:a:pull", "")
    cache.put(key, "t1", expires_in=300, fetched_at=clock())
    clock.advance(294)
    assert cache.get(key) == "t1"
    clock.advance(1.5)  # within the 5 s margin before expiry
    assert cache.get(key) is None
    assert len(cache) == 0

    cache.put(key, "t2", expires_in=4, fetched_at=clock())  # short: margin is half of it
    clock.advance(1.9)
    assert cache.get(key) == "t2"
    clock.advance(0.2)
    assert cache.get(key) is None


def test_token_cache_keys_and_invalidate(clock: FakeClock) -> None:
    cache = TokenCache(clock)
    cache.put(("r", "s", "fp1"), "a", 60, clock())
    cache.put(("r", "s", "fp2"), "b", 60, clock())
    assert cache.get(("r", "s", "fp1")) == "a"
    assert cache.get(("r", "s", "fp2")) == "b"
    cache.invalidate(("r", "s", "fp1"))
    assert cache.get(("r", "s", "fp1")) is None
    assert cache.get(("r", "s", "fp2")) == "b"


# -- Basic ------------------------------------------------------------------------------


def basic_registry(fake: FakeServer) -> Reference:
    serve_artifact(fake, REPO, ARTIFACT, wrap=lambda h: require_basic("user", SECRET, h))
    return Reference(fake.host, REPO, "v1")


def test_basic_auth_without_credentials_asks_for_a_secret(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    ref = basic_registry(fake)
    with pytest.raises(PermissionDenied) as caught:
        make_client(fake.host).get_manifest(ref, None, deadline(), [OCI_MANIFEST])
    message = str(caught.value)
    assert "requires credentials" in message
    assert "nodePublishSecretRef" in message
    assert "kubernetes.io/dockerconfigjson" in message
    assert str(ref) in message
    assert len(fake.requests_to(MANIFEST_PATH)) == 1  # no retry on 401


def test_basic_auth_with_wrong_credentials_is_refused(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    ref = basic_registry(fake)
    wrong = keychain(fake.host, Credentials("user", "wrong-" + SECRET))
    with pytest.raises(PermissionDenied) as caught:
        make_client(fake.host).get_manifest(ref, wrong, deadline(), [OCI_MANIFEST])
    message = str(caught.value)
    assert f"registry {fake.host} refused the credentials for {ref}" in message
    assert SECRET not in message
    assert "Basic " not in message
    assert len(fake.requests_to(MANIFEST_PATH)) == 2  # anonymous, then with Basic


def test_basic_auth_is_sent_up_front_once_learned(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    ref = basic_registry(fake)
    creds = keychain(fake.host, Credentials("user", SECRET))
    client = make_client(fake.host)
    manifest = client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert manifest.digest == ARTIFACT.manifest_digest
    first = fake.requests_to(MANIFEST_PATH)
    assert [r.authorization is None for r in first] == [True, False]

    client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to(MANIFEST_PATH)) == 3  # one more, authorised at once
    assert fake.requests_to(MANIFEST_PATH)[-1].authorization == basic_authorization(
        Credentials("user", SECRET)
    )


# -- Bearer -----------------------------------------------------------------------------


def bearer_registry(
    fake: FakeServer, tokens: TokenService, *, token_host: FakeServer | None = None
) -> Reference:
    auth_server = token_host or fake
    auth_server.route("/token", tokens.handle)
    auth_server.route("/token", tokens.handle, method="POST")
    realm = f"{auth_server.url}/token"
    scope = f"repository:{REPO}:pull"

    def wrap(inner: Handler) -> Handler:
        return require_bearer(tokens.valid, realm, "fake-registry", scope, inner)

    serve_artifact(fake, REPO, ARTIFACT, wrap=wrap)
    return Reference(fake.host, REPO, "v1")


def test_bearer_flow_with_scope_and_basic_credentials(
    fake: FakeServer, storage: FakeServer, make_client: ClientFactory
) -> None:
    tokens = TokenService(username="user", password=SECRET, expires_in=300)
    ref = bearer_registry(fake, tokens, token_host=storage)
    client = make_client(fake.host, storage.host)
    creds = keychain(fake.host, Credentials("user", SECRET))

    manifest = client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert manifest.digest == ARTIFACT.manifest_digest

    (token_request,) = storage.requests_to("/token")
    assert token_request.query == {
        "scope": [f"repository:{REPO}:pull"],
        "service": ["fake-registry"],
    }
    assert token_request.authorization == basic_authorization(Credentials("user", SECRET))
    attempts = fake.requests_to(MANIFEST_PATH)
    assert [r.authorization for r in attempts] == [None, "Bearer tok-1"]


def test_token_is_cached_and_refetched_after_expiry(
    fake: FakeServer, make_client: ClientFactory, clock: FakeClock
) -> None:
    tokens = TokenService(username="user", password=SECRET, expires_in=120)
    ref = bearer_registry(fake, tokens)
    client = make_client(fake.host)
    creds = keychain(fake.host, Credentials("user", SECRET))

    client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    client.fetch_blob(
        ref, ARTIFACT.blob_digest, len(ARTIFACT.blob), io.BytesIO(), creds, deadline(),
        limit=1 << 20,
    )  # fmt: skip
    client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to("/token")) == 1  # one token for all three requests
    blob_path = f"/v2/{REPO}/blobs/{ARTIFACT.blob_digest}"
    assert [r.authorization for r in fake.requests_to(blob_path)] == ["Bearer tok-1"]
    assert [r.authorization for r in fake.requests_to(MANIFEST_PATH)] == [
        None,
        "Bearer tok-1",
        "Bearer tok-1",
    ]

    clock.advance(116)  # past expires_in minus the margin
    client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to("/token")) == 2
    assert fake.requests_to(MANIFEST_PATH)[-1].authorization == "Bearer tok-2"


def test_token_cache_is_per_credentials(fake: FakeServer, make_client: ClientFactory) -> None:
    tokens = TokenService(expires_in=300)  # accepts anyone
    ref = bearer_registry(fake, tokens)
    client = make_client(fake.host)
    alice = keychain(fake.host, Credentials("alice", "a"))
    bob = keychain(fake.host, Credentials("bob", "b"))
    client.get_manifest(ref, alice, deadline(), [OCI_MANIFEST])
    client.get_manifest(ref, bob, deadline(), [OCI_MANIFEST])
    client.get_manifest(ref, alice, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to("/token")) == 2
    auths = [r.authorization for r in fake.requests_to("/token")]
    assert auths == [
        basic_authorization(Credentials("alice", "a")),
        basic_authorization(Credentials("bob", "b")),
    ]


def test_default_token_lifetime_is_60s(
    fake: FakeServer, make_client: ClientFactory, clock: FakeClock
) -> None:
    tokens = TokenService(expires_in=None)
    ref = bearer_registry(fake, tokens)
    client = make_client(fake.host)
    client.get_manifest(ref, None, deadline(), [OCI_MANIFEST])
    clock.advance(50)
    client.get_manifest(ref, None, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to("/token")) == 1
    clock.advance(6)  # 56 s: inside the 5 s margin of 60 s
    client.get_manifest(ref, None, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to("/token")) == 2


def test_anonymous_token_for_a_public_repository(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    tokens = TokenService()
    ref = bearer_registry(fake, tokens)
    manifest = make_client(fake.host).get_manifest(ref, None, deadline(), [OCI_MANIFEST])
    assert manifest.digest == ARTIFACT.manifest_digest
    (token_request,) = fake.requests_to("/token")
    assert token_request.authorization is None


def test_private_repository_without_credentials(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    # The token service issues anonymous tokens, but the registry rejects them.
    tokens = TokenService()
    ref = bearer_registry(fake, tokens)
    fake.route(
        MANIFEST_PATH, require_bearer(lambda _t: False, f"{fake.url}/token", "s", "x", _never)
    )
    with pytest.raises(PermissionDenied, match="requires credentials"):
        make_client(fake.host).get_manifest(ref, None, deadline(), [OCI_MANIFEST])
    assert len(fake.requests_to(MANIFEST_PATH)) == 2


def test_token_service_refuses_credentials(fake: FakeServer, make_client: ClientFactory) -> None:
    tokens = TokenService(username="user", password=SECRET)
    ref = bearer_registry(fake, tokens)
    wrong = keychain(fake.host, Credentials("user", "nope-" + SECRET))
    with pytest.raises(PermissionDenied) as caught:
        make_client(fake.host).get_manifest(ref, wrong, deadline(), [OCI_MANIFEST])
    assert "refused the credentials" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert len(fake.requests_to("/token")) == 1  # no retry on 401


def test_token_service_requires_credentials(fake: FakeServer, make_client: ClientFactory) -> None:
    tokens = TokenService(username="user", password=SECRET)
    ref = bearer_registry(fake, tokens)
    with pytest.raises(PermissionDenied, match="requires credentials"):
        make_client(fake.host).get_manifest(ref, None, deadline(), [OCI_MANIFEST])


def test_identity_token_uses_the_oauth2_form(fake: FakeServer, make_client: ClientFactory) -> None:
    tokens = TokenService()
    ref = bearer_registry(fake, tokens)
    creds = keychain(fake.host, Credentials(identity_token="refresh-" + SECRET))
    make_client(fake.host).get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    (post,) = [r for r in fake.requests_to("/token") if r.method == "POST"]
    form = post.form()
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["refresh-" + SECRET]
    assert form["scope"] == [f"repository:{REPO}:pull"]
    assert form["service"] == ["fake-registry"]
    assert post.authorization is None


def test_identity_token_falls_back_to_get_without_oauth2(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    tokens = TokenService(username="<token>", password="refresh-" + SECRET)
    ref = bearer_registry(fake, tokens)
    fake.route("/token", json_reply({"errors": []}, status=404), method="POST")
    creds = keychain(fake.host, Credentials(identity_token="refresh-" + SECRET))
    make_client(fake.host).get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    methods = [r.method for r in fake.requests_to("/token")]
    assert methods == ["POST", "GET"]


def test_bad_identity_token_is_refused(fake: FakeServer, make_client: ClientFactory) -> None:
    tokens = TokenService()
    ref = bearer_registry(fake, tokens)
    fake.route("/token", json_reply({"error": "invalid_grant"}, status=400), method="POST")
    creds = keychain(fake.host, Credentials(identity_token="stale-" + SECRET))
    with pytest.raises(PermissionDenied, match="refused the credentials") as caught:
        make_client(fake.host).get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert SECRET not in str(caught.value)


def test_token_response_without_token(fake: FakeServer, make_client: ClientFactory) -> None:
    tokens = TokenService()
    ref = bearer_registry(fake, tokens)
    fake.route("/token", json_reply({"nothing": "here"}))
    with pytest.raises(FailedPrecondition, match="did not return a token"):
        make_client(fake.host).get_manifest(ref, None, deadline(), [OCI_MANIFEST])


def test_unknown_challenge_without_credentials(
    fake: FakeServer, make_client: ClientFactory
) -> None:
    fake.route(
        MANIFEST_PATH,
        json_reply({}, status=401, headers={"WWW-Authenticate": "Negotiate"}),
    )
    ref = Reference(fake.host, REPO, "v1")
    with pytest.raises(PermissionDenied, match="requires credentials"):
        make_client(fake.host).get_manifest(ref, None, deadline(), [OCI_MANIFEST])


def test_plain_http_realm_is_refused_for_an_https_registry(
    tls_fake: FakeServer, fake: FakeServer, tls_files: TlsFiles, make_client: ClientFactory
) -> None:
    tokens = TokenService(username="user", password=SECRET)
    fake.route("/token", tokens.handle)
    realm = f"{fake.url}/token"  # http, and not listed as insecure
    tls_fake.route(
        MANIFEST_PATH,
        require_bearer(tokens.valid, realm, "s", "x", _never),
    )
    ref = Reference(tls_fake.host, REPO, "v1")
    client = make_client(ca_file=tls_files.cert)
    creds = keychain(tls_fake.host, Credentials("user", SECRET))
    with pytest.raises(FailedPrecondition, match="plain-http token service"):
        client.get_manifest(ref, creds, deadline(), [OCI_MANIFEST])
    assert fake.requests_to("/token") == []


def _never(exchange: Exchange) -> None:
    raise AssertionError("the registry should not have let this request through")
