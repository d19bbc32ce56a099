"""Versioned key-encryption keys (X25519): create, rotate, list, destroy, and unwrap with the private half.

Lifecycle: ``active`` (one at a time: stations seal to it) → ``retired`` (still unwraps what was sealed to
it) → ``destroyed`` (private half deleted: every report sealed under that version is unreadable forever —
crypto-shredding). Destruction is allowed only for retired versions older than the retention period.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from sqlalchemy import Connection, func, select, update

from keyserver import audit
from keyserver.db import aware, utcnow
from keyserver.masterkey import MasterKey
from keyserver.models import keks
from kiosk.sealing.envelope import PublicKek, generate_kek

PURPOSE = "kek"


class KekError(ValueError):
    pass


@dataclass(frozen=True)
class KekInfo:
    version: int
    status: str
    fingerprint: str
    created_at: dt.datetime
    retired_at: dt.datetime | None
    destroyed_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
            "destroyed_at": self.destroyed_at.isoformat() if self.destroyed_at else None,
        }


def _aad(version: int) -> bytes:
    # Binding the ciphertext to its version stops a row's private key being swapped into another row.
    return f"kek:{version}".encode()


def list_keks(conn: Connection) -> list[KekInfo]:
    rows = conn.execute(select(keks).order_by(keks.c.version)).mappings()
    return [
        KekInfo(
            version=r["version"],
            status=r["status"],
            fingerprint=hashlib.sha256(r["public_key"]).hexdigest(),
            created_at=aware(r["created_at"]),  # type: ignore[arg-type]
            retired_at=aware(r["retired_at"]),
            destroyed_at=aware(r["destroyed_at"]),
        )
        for r in rows
    ]


def public_keys(conn: Connection, base_url: str) -> list[PublicKek]:
    """Active and retired public keys, newest first (stations seal to the first)."""
    rows = conn.execute(
        select(keks.c.version, keks.c.public_key)
        .where(keks.c.status != "destroyed")
        .order_by(keks.c.version.desc())
    )
    return [PublicKek(r.version, X25519PublicKey.from_public_bytes(r.public_key), base_url) for r in rows]


def rotate(
    conn: Connection, master: MasterKey, *, actor: str, private: X25519PrivateKey | None = None
) -> int:
    """Create a new active version and retire the previous one; audited in the same transaction."""
    private = private or generate_kek()
    version = (conn.execute(select(func.max(keks.c.version))).scalar() or 0) + 1
    now = utcnow()
    conn.execute(update(keks).where(keks.c.status == "active").values(status="retired", retired_at=now))
    conn.execute(
        keks.insert().values(
            version=version,
            public_key=private.public_key().public_bytes_raw(),
            private_key_enc=master.encrypt(PURPOSE, private.private_bytes_raw(), _aad(version)),
            status="active",
            created_at=now,
        )
    )
    fingerprint = hashlib.sha256(private.public_key().public_bytes_raw()).hexdigest()
    audit.append(
        conn,
        actor=actor,
        action="kek.rotate",
        outcome="ok",
        details={"kek_version": version, "fingerprint": fingerprint},
    )
    return version


def rotation_due(conn: Connection, period_days: int, now: dt.datetime | None = None) -> bool:
    created = conn.execute(select(keks.c.created_at).where(keks.c.status == "active")).scalar()
    if created is None:
        return True
    return (now or utcnow()) - aware(created) >= dt.timedelta(days=period_days)  # type: ignore[operator]


def destroy(
    conn: Connection,
    version: int,
    *,
    actor: str,
    retention_days: int,
    now: dt.datetime | None = None,
) -> None:
    row = conn.execute(select(keks).where(keks.c.version == version)).mappings().first()
    if row is None:
        raise KekError(f"no KEK version {version}")
    if row["status"] != "retired":
        raise KekError(f"KEK version {version} is {row['status']}; only retired versions can be destroyed")
    retired_at = aware(row["retired_at"])
    if retired_at is None or (now or utcnow()) - retired_at < dt.timedelta(days=retention_days):
        raise KekError(f"KEK version {version} is still within its {retention_days}-day retention period")
    conn.execute(
        update(keks)
        .where(keks.c.version == version)
        .values(status="destroyed", private_key_enc=None, destroyed_at=now or utcnow())
    )
    audit.append(conn, actor=actor, action="kek.destroy", outcome="ok", details={"kek_version": version})


class PrivateKeyCache:
    """Decrypted private keys, one per version with the digest of the ciphertext it came from: each unwrap
    still reads the row, so a destroyed version is refused at once even by a worker that cached it, and a
    changed ciphertext is decrypted again."""

    def __init__(self, master: MasterKey) -> None:
        self._master = master
        self._cache: dict[int, tuple[bytes, X25519PrivateKey]] = {}

    def entry(self, version: int, private_key_enc: bytes) -> tuple[bytes, X25519PrivateKey]:
        """(digest of the ciphertext, private key) for this row of the keks table."""
        digest = hashlib.sha256(private_key_enc).digest()
        found = self._cache.get(version)
        if found is None or found[0] != digest:
            raw = self._master.decrypt(PURPOSE, private_key_enc, _aad(version))
            found = self._cache[version] = (digest, X25519PrivateKey.from_private_bytes(raw))
        return found

    def get(self, version: int, private_key_enc: bytes) -> X25519PrivateKey:
        return self.entry(version, private_key_enc)[1]

    def peek(self, version: int | None) -> tuple[bytes, X25519PrivateKey] | None:
        """The cached (digest, key) of a version without reading its row: only for work whose result is
        used after the row has been read and its digest compared (reports.unwrap's early HPKE unwrap)."""
        return self._cache.get(version) if version is not None else None

    def forget(self, version: int) -> None:
        self._cache.pop(version, None)


def decrypt_private(master: MasterKey, version: int, private_key_enc: bytes) -> bytes:
    """Raw private bytes (backup only)."""
    return master.decrypt(PURPOSE, private_key_enc, _aad(version))


def encrypt_private(master: MasterKey, version: int, raw: bytes) -> bytes:
    return master.encrypt(PURPOSE, raw, _aad(version))
