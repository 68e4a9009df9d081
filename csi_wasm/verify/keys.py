"""Public keys that may sign modules, as cosign writes them (``cosign.pub``).

A key is one kind of :class:`Authority`: something that says whether a signature over
some bytes is its own. Keyless signing (a Fulcio certificate chained to a trusted root)
is meant to be another kind, judging the certificate that comes with the signature in
:class:`Material` instead of holding a key itself.

Accepted keys, as cosign signs with them: ECDSA P-256, P-384, P-521 and RSA 2048 to
4096 bits (PKCS#1 v1.5), PEM SubjectPublicKeyInfo. cosign 2 hashes with SHA-256 for
every key; later versions hash with the curve's own size (SHA-384 for P-384, SHA-512
for P-521), so both are tried for those curves. Imported ed25519 keys make Ed25519ph
signatures, which nothing else checks: they are refused when the key is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from csi_wasm.verify.files import read_capped

MAX_KEY_FILE_BYTES = 64 * 1024
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 4096


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Material:
    """What comes with a signature besides the signed bytes (certificates, later)."""

    certificate: str | None = None
    chain: str | None = None


class Authority(Protocol):
    """Someone whose signatures a policy accepts."""

    @property
    def name(self) -> str:
        """The name policies and pod attributes use."""

    @property
    def fingerprint(self) -> str:
        """Identifies what the authority trusts; a verdict is kept per fingerprint."""

    def verifies(self, signed: bytes, signature: bytes, material: Material) -> bool:
        """True if ``signature`` over ``signed`` is this authority's."""


_PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CURVE_HASHES: Mapping[str, tuple[type[hashes.HashAlgorithm], ...]] = {
    "secp256r1": (hashes.SHA256,),
    "secp384r1": (hashes.SHA384, hashes.SHA256),
    "secp521r1": (hashes.SHA512, hashes.SHA256),
}


@dataclass(frozen=True)
class PublicKey:
    """A named public key: an :class:`Authority` that holds its key."""

    name: str
    key: _PublicKey = field(repr=False)
    fingerprint: str  # sha256 hex of the DER SubjectPublicKeyInfo
    description: str  # "ECDSA P-256", "RSA-3072"

    def verifies(self, signed: bytes, signature: bytes, material: Material) -> bool:
        del material  # a key needs nothing but itself
        key = self.key
        if isinstance(key, rsa.RSAPublicKey):
            candidates: tuple[type[hashes.HashAlgorithm], ...] = (hashes.SHA256,)
        else:
            candidates = _CURVE_HASHES[key.curve.name]
        for algorithm in candidates:
            try:
                if isinstance(key, rsa.RSAPublicKey):
                    key.verify(signature, signed, padding.PKCS1v15(), algorithm())
                else:
                    key.verify(signature, signed, ec.ECDSA(algorithm()))
            except (InvalidSignature, ValueError):
                continue
            return True
        return False


def parse_public_key(name: str, pem: bytes, where: str) -> PublicKey:
    """A key from PEM bytes; :class:`KeyFileError` naming ``where`` if it is not usable."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFileError(
            f"{where} is not a PEM public key (-----BEGIN PUBLIC KEY-----, as cosign.pub): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise KeyFileError(
            f"{where} is an Ed25519/Ed448 key: cosign signs with those as Ed25519ph, which "
            "csi-wasm does not check; use an ECDSA P-256 key (cosign generate-key-pair)"
        )
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        if curve not in _CURVE_HASHES:
            raise KeyFileError(
                f"{where} is an ECDSA key on curve {curve}; use P-256, P-384 or P-521"
            )
        description = f"ECDSA P-{curve[4:7]}"
    elif isinstance(key, rsa.RSAPublicKey):
        if not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
            raise KeyFileError(f"{where} is a {key.key_size}-bit RSA key; use 2048 to 4096 bits")
        description = f"RSA-{key.key_size}"
    else:
        raise KeyFileError(f"{where} holds a {type(key).__name__}; use ECDSA or RSA")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PublicKey(name, key, hashlib.sha256(der).hexdigest(), description)


def load_key_file(name: str, path: Path) -> PublicKey:
    """Read ``--verify-key NAME=PATH``; :class:`KeyFileError` naming the file on any problem."""
    pem = read_capped(path, MAX_KEY_FILE_BYTES, "key file", KeyFileError)
    return parse_public_key(name, pem, f"key file {path}")


def parse_key_flag(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--verify-key``."""
    name, sep, path = value.partition("=")
    name = name.strip()
    if not sep or not name or not path.strip():
        raise KeyFileError(f"--verify-key {value!r} is not NAME=PATH")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise KeyFileError(
            f"--verify-key name {name!r} may only hold letters, digits, '-', '_', '.'"
        )
    return name, Path(path.strip())


def load_keys(flags: tuple[str, ...]) -> dict[str, PublicKey]:
    """Every ``--verify-key``, by name; a name given twice is an error."""
    keys: dict[str, PublicKey] = {}
    for value in flags:
        name, path = parse_key_flag(value)
        if name in keys:
            raise KeyFileError(f"--verify-key {name} is given twice")
        keys[name] = load_key_file(name, path)
    return keys
