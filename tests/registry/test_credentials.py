"""Tests of csi_wasm.registry.credentials: dockerconfigjson -> Keychain."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from csi_wasm.errors import InvalidArgument
from csi_wasm.registry.credentials import Credentials, Keychain, keychain_from_file, normalize_host

SECRET = "s3cr3t-Pa55"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def config(auths: dict[str, object]) -> dict[str, str]:
    return {".dockerconfigjson": json.dumps({"auths": auths})}


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("http://Reg.Example:5000/v2/", "reg.example:5000"),
        ("reg.example:5000/team/repo", "reg.example:5000"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_normalize_host(key: str, host: str) -> None:
    assert normalize_host(key) == host


def test_all_entry_forms() -> None:
    keychain = Keychain.from_secrets(
        config(
            {
                "https://index.docker.io/v1/": {"auth": b64(f"hubuser:{SECRET}")},
                "ghcr.io": {"username": "gh", "password": SECRET},
                "https://quay.io": {"identitytoken": "refresh-me"},
                "reg.example:5000/team": {"auth": b64("a:b:c")},
                "empty.example": {},
            }
        )
    )
    assert keychain is not None
    assert keychain.for_registry("docker.io") == Credentials("hubuser", SECRET)
    assert keychain.for_registry("index.docker.io") == Credentials("hubuser", SECRET)
    assert keychain.for_registry("ghcr.io") == Credentials("gh", SECRET)
    quay = keychain.for_registry("quay.io")
    assert quay is not None and quay.identity_token == "refresh-me"
    assert not quay.has_password
    assert keychain.for_registry("reg.example:5000") == Credentials("a", "b:c")
    assert keychain.for_registry("empty.example") is None
    assert keychain.for_registry("reg.example") is None  # the port is part of the host
    assert keychain.registries == {"docker.io", "ghcr.io", "quay.io", "reg.example:5000"}


def test_bare_host_key_wins_over_url_key() -> None:
    keychain = Keychain.from_secrets(
        config(
            {
                "https://ghcr.io/v2/": {"username": "url", "password": "x"},
                "ghcr.io": {"username": "bare", "password": "y"},
            }
        )
    )
    assert keychain is not None
    creds = keychain.for_registry("ghcr.io")
    assert creds is not None and creds.username == "bare"


def test_legacy_dockercfg_and_precedence() -> None:
    legacy = {".dockercfg": json.dumps({"ghcr.io": {"auth": b64("old:pw"), "email": "e@x"}})}
    keychain = Keychain.from_secrets(legacy)
    assert keychain is not None
    assert keychain.for_registry("ghcr.io") == Credentials("old", "pw")

    both = {**legacy, **config({"ghcr.io": {"auth": b64("new:pw")}})}
    keychain = Keychain.from_secrets(both)
    assert keychain is not None
    creds = keychain.for_registry("ghcr.io")
    assert creds is not None and creds.username == "new"


def test_unrelated_secrets_give_no_keychain() -> None:
    assert Keychain.from_secrets({}) is None
    assert Keychain.from_secrets({"token": SECRET, "ca.crt": "x"}) is None
    empty = Keychain.from_secrets(config({}))
    assert empty is not None and len(empty) == 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"auths": {"ghcr.io": {"auth": "' + SECRET, "not valid JSON"),
        (f"[{json.dumps(SECRET)}]", "not a JSON object"),
        (json.dumps({"auths": [SECRET]}), "'auths' that is not an object"),
        (json.dumps({"auths": {"ghcr.io": SECRET}}), "entry for 'ghcr.io' is not an object"),
        (json.dumps({"auths": {"ghcr.io": {"auth": SECRET + "!!"}}}), "not base64"),
        (json.dumps({"auths": {"ghcr.io": {"auth": b64(SECRET)}}}), "not base64 of"),
        (json.dumps({"auths": {"ghcr.io": {"password": [SECRET]}}}), "non-string 'password'"),
    ],
)
def test_malformed_secrets_never_echo_content(value: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Keychain.from_secrets({".dockerconfigjson": value})
    message = str(caught.value)
    assert problem in message
    assert SECRET not in message
    assert "kubectl create secret docker-registry" in message
    # The JSON error (which holds the document) is not chained.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_secrets_stay_out_of_repr_and_fingerprints() -> None:
    creds = Credentials("user", SECRET, identity_token="tok-" + SECRET)
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    fingerprint = creds.fingerprint()
    assert len(fingerprint) == 64
    assert SECRET not in fingerprint
    keychain = Keychain({"ghcr.io": creds})
    assert SECRET not in repr(keychain)


def test_fingerprint_identifies_credentials() -> None:
    a = Credentials("user", "one")
    assert a.fingerprint() == Credentials("user", "one").fingerprint()
    assert a.fingerprint() != Credentials("user", "two").fingerprint()
    assert a.fingerprint() != Credentials("user2", "one").fingerprint()
    # Field boundaries matter: ("ab", "c") is not ("a", "bc").
    assert Credentials("ab", "c").fingerprint() != Credentials("a", "bc").fingerprint()
    assert a.fingerprint() != Credentials("user", "one", identity_token="t").fingerprint()


def test_keychain_from_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"auths": {"ghcr.io": {"username": "u", "password": "hunter2"}}}')
    assert keychain_from_file(str(config)).for_registry("ghcr.io") == Credentials("u", "hunter2")
    with pytest.raises(ValueError, match=r"^--docker-config .*missing\.json: No such file"):
        keychain_from_file(str(tmp_path / "missing.json"))
    config.write_text('{"auths": {"ghcr.io": {"auth": "hunter2-not-base64!"}}')
    with pytest.raises(ValueError) as broken:
        keychain_from_file(str(config))
    assert "hunter2" not in str(broken.value) and str(config) in str(broken.value)
    config.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        keychain_from_file(str(config))
