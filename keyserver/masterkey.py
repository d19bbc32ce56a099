"""The master secret: it encrypts KEK private halves and TOTP secrets at rest, and never lives in the DB.

Sources, first found wins: the systemd credential ``$CREDENTIALS_DIRECTORY/keyserver-master``, the
configured ``master_secret_file``, the environment variable named by ``master_secret_env``. With none of
them, and only if ``allow_generated_master_secret`` is true (the zero-config demo), a random secret is
created in ``data_dir/master.key`` (0600). Losing the master secret loses every KEK: back it up apart from
the database, or use ``keyserver backup``, which re-encrypts the KEKs under the backup passphrase.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyserver.config import Config

CREDENTIAL_NAME = "keyserver-master"
NONCE_SIZE = 12
MIN_SECRET_BYTES = 32


class MasterKeyError(RuntimeError):
    pass


class MasterKey:
    """AES-256-GCM under a key derived (HKDF-SHA256) from the master secret; one sub-key per purpose."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise MasterKeyError(f"the master secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._aeads: dict[str, AESGCM] = {}

    def _aead(self, purpose: str) -> AESGCM:
        if purpose not in self._aeads:
            key = HKDF(hashes.SHA256(), 32, salt=None, info=f"keyserver/{purpose}".encode()).derive(
                self._secret
            )
            self._aeads[purpose] = AESGCM(key)
        return self._aeads[purpose]

    def encrypt(self, purpose: str, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead(purpose).encrypt(nonce, plaintext, aad)

    def decrypt(self, purpose: str, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead(purpose).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag as exc:
            raise MasterKeyError(
                "cannot decrypt a stored secret: wrong master secret, or the row was altered"
            ) from exc


def _read_secret(path: Path) -> bytes:
    raw = path.read_bytes().strip()
    if not raw:
        raise MasterKeyError(f"the master secret file {path} is empty")
    return raw


def load_master_key(config: Config) -> MasterKey:
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        return MasterKey(_read_secret(Path(cred_dir) / CREDENTIAL_NAME))
    if config.master_secret_file:
        try:
            return MasterKey(_read_secret(config.master_secret_file))
        except OSError as exc:
            raise MasterKeyError(f"cannot read the master secret file: {exc}") from exc
    env_value = os.environ.get(config.master_secret_env, "").strip()
    if env_value:
        return MasterKey(env_value.encode())
    if not config.allow_generated_master_secret:
        raise MasterKeyError("no master secret configured (systemd credential, file or environment variable)")
    path = config.data_dir / "master.key"
    if not path.exists():
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    return MasterKey(_read_secret(path))
