"""Envelope encryption: a per-report data key wrapped to the key server's public key.

The wrap is HPKE (RFC 9180, base mode) with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, from
pyca/cryptography. The canonical bytes of the sealed file's header are HPKE's ``info``, so changing any
header byte makes unwrapping fail. The station holds only public keys: it can seal offline but can never
unwrap what it sealed. Only the key server, which holds the private half of each versioned key-encryption
key (KEK), can unwrap, and it writes an audit record before it answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

WRAP_ALGORITHM = "HPKE-Base-X25519-SHA256-AES256GCM"
DATA_KEY_SIZE = 64  # RNCryptor key mode: 32 bytes AES key + 32 bytes HMAC key

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class UnwrapError(ValueError):
    """The wrapped key does not belong to this header and KEK (tampered header, wrong key version)."""


def canonical_json(value: Any) -> bytes:
    """One byte sequence per value: sorted keys, no spaces, ASCII only."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PublicKek:
    """One version of the key server's public key, as stations receive and store it."""

    version: int
    key: X25519PublicKey
    key_server_url: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.key.public_bytes_raw()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "algorithm": WRAP_ALGORITHM,
            "public_key": b64encode(self.key.public_bytes_raw()),
            "fingerprint": self.fingerprint,
            "key_server_url": self.key_server_url,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PublicKek:
        if data.get("algorithm") != WRAP_ALGORITHM:
            raise ValueError(f"unsupported key algorithm {data.get('algorithm')!r}")
        try:
            key = X25519PublicKey.from_public_bytes(b64decode(data["public_key"]))
            kek = cls(version=int(data["version"]), key=key, key_server_url=str(data["key_server_url"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"malformed key server public key: {exc}") from exc
        if "fingerprint" in data and data["fingerprint"] != kek.fingerprint:
            raise ValueError("key server public key does not match its fingerprint")
        return kek


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


def generate_kek() -> X25519PrivateKey:
    """A fresh KEK private key; only the key server calls this."""
    return X25519PrivateKey.generate()


def wrap(data_key: bytes, header: dict[str, Any], kek: X25519PublicKey) -> bytes:
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError("data keys are 64 bytes")
    return _SUITE.encrypt(data_key, kek, info=canonical_json(header))


def unwrap(wrapped: bytes, header: dict[str, Any], kek: X25519PrivateKey) -> bytes:
    return unwrap_canonical(wrapped, canonical_json(header), kek)


def unwrap_canonical(wrapped: bytes, canonical_header: bytes, kek: X25519PrivateKey) -> bytes:
    """unwrap() for a header already in canonical form (the key server has it for the header's hash)."""
    try:
        data_key = _SUITE.decrypt(wrapped, kek, info=canonical_header)
    except (InvalidTag, ValueError) as exc:
        raise UnwrapError("the key does not match this report header (altered header or wrong key)") from exc
    if len(data_key) != DATA_KEY_SIZE:
        raise UnwrapError("the unwrapped data key has the wrong size")
    return data_key
