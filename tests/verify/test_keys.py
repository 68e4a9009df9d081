"""Tests of csi_wasm.verify.keys: which public keys load, and what they verify."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from support.cosign import DATA, Signer

from csi_wasm.verify.keys import (
    KeyFileError,
    Material,
    load_key_file,
    load_keys,
    parse_key_flag,
    parse_public_key,
)


@pytest.mark.parametrize(
    ("signer", "description"),
    [
        (Signer.p256(), "ECDSA P-256"),
        (Signer.p384(), "ECDSA P-384"),
        (Signer.rsa3072(), "RSA-3072"),
    ],
)
def test_a_key_verifies_its_own_signatures_only(signer: Signer, description: str) -> None:
    key = parse_public_key("k", signer.public_pem(), "test")
    assert key.description == description
    assert key.verifies(b"payload", signer.sign(b"payload"), Material())
    assert not key.verifies(b"payloaD", signer.sign(b"payload"), Material())
    assert not key.verifies(b"payload", Signer.p256().sign(b"payload"), Material())
    assert not key.verifies(b"payload", b"\x30\x00garbage", Material())


def test_p384_accepts_sha256_as_cosign_2_signs_and_sha384_as_later_versions() -> None:
    signer = Signer.p384()
    key = parse_public_key("k", signer.public_pem(), "test")
    assert key.verifies(b"x", signer.sign(b"x", hashes.SHA256()), Material())
    assert key.verifies(b"x", signer.sign(b"x", hashes.SHA384()), Material())


def test_p521_key_loads() -> None:
    private = ec.generate_private_key(ec.SECP521R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = parse_public_key("k", pem, "test")
    assert key.description == "ECDSA P-521"
    assert key.verifies(b"x", private.sign(b"x", ec.ECDSA(hashes.SHA512())), Material())


def test_the_real_cosign_pub_loads_with_a_stable_fingerprint() -> None:
    first = load_key_file("a", DATA / "cosign.pub")
    second = load_key_file("b", DATA / "cosign.pub")
    other = load_key_file("c", DATA / "cosign2.pub")
    assert first.description == "ECDSA P-256"
    assert first.fingerprint == second.fingerprint != other.fingerprint
    assert len(first.fingerprint) == 64


def _pem(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_ed25519_is_refused_with_a_reason() -> None:
    pem = _pem(ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFileError, match="Ed25519ph"):
        parse_public_key("k", pem, "key file x.pub")


def test_small_rsa_is_refused() -> None:
    pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
    with pytest.raises(KeyFileError, match="1024-bit RSA key"):
        parse_public_key("k", pem, "key file x.pub")


def test_a_private_key_or_garbage_is_not_a_public_key(tmp_path: Path) -> None:
    path = tmp_path / "cosign.key"
    path.write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(
        KeyFileError, match=f"key file {re.escape(str(path))} is not a PEM public key"
    ):
        load_key_file("k", path)


def test_unreadable_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"cannot read key file .*missing\.pub"):
        load_key_file("k", tmp_path / "missing.pub")


def test_flags(tmp_path: Path) -> None:
    path = Signer.p256().write_public(tmp_path / "a.pub")
    assert parse_key_flag(f"team-a={path}") == ("team-a", path)
    for bad in ("team-a", "=x", "team a=x", "a="):
        with pytest.raises(KeyFileError):
            parse_key_flag(bad)
    assert set(load_keys((f"a={path}", f"b={path}"))) == {"a", "b"}
    with pytest.raises(KeyFileError, match="given twice"):
        load_keys((f"a={path}", f"a={path}"))
