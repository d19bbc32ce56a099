"""Encrypted backup and restore of the whole key server state (database rows and KEKs) in one file.

The file is ``MAGIC | salt(16) | nonce(12) | AES-256-GCM(scrypt(passphrase, salt), zlib(JSON))`` with the
magic as associated data. KEK private halves and TOTP secrets are decrypted with the master secret and put
in the backup raw (inside the encryption), and re-encrypted under the target's master secret on restore:
the passphrase and the file alone bring every report back, even if the old master secret is lost. Keep the
passphrase as carefully as the keys themselves. Inbox files are not included (they are sealed copies with a
short retention; stations and recipients keep theirs).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import zlib
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import Connection, func, select, text, update

from keyserver import audit, keks
from keyserver.masterkey import MasterKey
from keyserver.models import BACKUP_TABLES, audit_head
from keyserver.models import keks as keks_table
from keyserver.models import users as users_table

MAGIC = b"KSBACKUP\x01"
FORMAT = "clinical-photo-keyserver-backup"
MIN_PASSPHRASE = 12
_SERIAL = {"users": "id", "groups": "id", "grants": "id", "api_tokens": "id", "enrollment_codes": "id"}


class BackupError(ValueError):
    pass


def _kdf(passphrase: str, salt: bytes) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"backup passphrases have at least {MIN_PASSPHRASE} characters")
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    if isinstance(value, dt.datetime):
        return {"$dt": (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$b64"}:
        return base64.b64decode(value["$b64"])
    if isinstance(value, dict) and set(value) == {"$dt"}:
        return dt.datetime.fromisoformat(value["$dt"])
    return value


def create(conn: Connection, master: MasterKey, passphrase: str, *, actor: str) -> bytes:
    """Dump every table (inside the caller's write transaction, so the snapshot is consistent)."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = _kdf(passphrase, salt)
    audit.append(conn, actor=actor, action="backup.create", outcome="ok", details={})
    tables: dict[str, list[dict[str, Any]]] = {}
    for table in BACKUP_TABLES:
        rows = [dict(r) for r in conn.execute(select(table)).mappings()]
        if table is keks_table:
            for row in rows:
                enc = row.pop("private_key_enc")
                row["private_key_raw"] = keks.decrypt_private(master, row["version"], enc) if enc else None
        if table is users_table:
            for row in rows:
                enc = row.pop("totp_secret_enc")
                aad = f"totp:{row['id']}".encode()
                row["totp_secret_raw"] = master.decrypt("totp", enc, aad) if enc else None
        tables[table.name] = [{k: _encode(v) for k, v in row.items()} for row in rows]
    document = {
        "format": FORMAT,
        "version": 1,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "tables": tables,
    }
    plaintext = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 9)
    return MAGIC + salt + nonce + AESGCM(key).encrypt(nonce, plaintext, MAGIC)


def _open(blob: bytes, passphrase: str) -> dict[str, Any]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 28 + 16:
        raise BackupError("not a key server backup file")
    salt = blob[len(MAGIC) : len(MAGIC) + 16]
    nonce = blob[len(MAGIC) + 16 : len(MAGIC) + 28]
    try:
        plaintext = AESGCM(_kdf(passphrase, salt)).decrypt(nonce, blob[len(MAGIC) + 28 :], MAGIC)
    except InvalidTag as exc:
        raise BackupError("wrong passphrase, or the backup file is damaged") from exc
    document = json.loads(zlib.decompress(plaintext))
    if document.get("format") != FORMAT or document.get("version") != 1:
        raise BackupError("unsupported backup format")
    return document  # type: ignore[no-any-return]


def restore(conn: Connection, master: MasterKey, blob: bytes, passphrase: str, *, actor: str) -> int:
    """Load a backup into an empty (migrated) database; returns the number of audit records restored."""
    document = _open(blob, passphrase)
    for table in BACKUP_TABLES:
        if table is audit_head:
            continue
        if conn.execute(select(func.count()).select_from(table)).scalar():
            raise BackupError(
                f"the target database is not empty (table {table.name}); restore needs an empty one"
            )
    tables = document["tables"]
    for table in BACKUP_TABLES:
        rows = [{k: _decode(v) for k, v in row.items()} for row in tables.get(table.name, [])]
        if table is keks_table:
            for row in rows:
                raw = row.pop("private_key_raw")
                row["private_key_enc"] = keks.encrypt_private(master, row["version"], raw) if raw else None
        if table is users_table:
            for row in rows:
                raw = row.pop("totp_secret_raw")
                row["totp_secret_enc"] = (
                    master.encrypt("totp", raw, f"totp:{row['id']}".encode()) if raw else None
                )
        if table is audit_head:
            for row in rows:
                conn.execute(update(audit_head).where(audit_head.c.id == row["id"]).values(**row))
            continue
        if rows:
            conn.execute(table.insert(), rows)
    if conn.dialect.name == "postgresql":
        # Explicit ids were inserted: move each serial sequence past them.
        for name, column in _SERIAL.items():
            # Table and column names are the constants above, never input.
            sql = f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) FROM {name}"  # noqa: S608, E501
            conn.execute(text(sql))
    result = audit.verify(conn)
    if not result.ok:
        raise BackupError("the restored audit chain does not verify: " + "; ".join(result.problems[:3]))
    audit.append(
        conn,
        actor=actor,
        action="backup.restore",
        outcome="ok",
        details={"backup_created_at": document["created_at"], "records": result.records},
    )
    return result.records
