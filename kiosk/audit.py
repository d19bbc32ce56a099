"""The station's own audit trail: hash-chained events carrying report ids, never patient data.

Each record's hash covers its fields and the previous record's hash, so editing, inserting or deleting
a record breaks the chain at that point (`verify`). Records are written on the caller's SQLite
connection, inside the caller's transaction, so a state change and its audit record commit together.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
# The fields of a record, in hash order; also the exact shape of a record shipped to the key server.
FIELDS = ("seq", "at", "event", "report_id", "actor", "details", "prev_hash", "hash")
_COLUMNS = ", ".join(FIELDS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    report_id TEXT,
    actor TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: float
    event: str
    report_id: str | None
    actor: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def digest(
    seq: int, at: float, event: str, report_id: str | None, actor: str, details: str, prev: str
) -> str:
    """A record's hash; public because the key server recomputes it for records a station ships.

    `details` is the JSON text exactly as stored (the hash covers the text, not a re-serialization).
    """
    material = json.dumps([seq, repr(at), event, report_id, actor, details, prev], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def append(
    db: sqlite3.Connection,
    event: str,
    *,
    report_id: str | None = None,
    actor: str = "station",
    **details: Any,
) -> None:
    """Append one record; call inside the transaction that makes the change it records."""
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    at = time.time()
    text = json.dumps(details, sort_keys=True, separators=(",", ":"))
    db.execute(
        f"INSERT INTO audit ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",  # noqa: S608 - constant column list
        (seq, at, event, report_id, actor, text, prev, digest(seq, at, event, report_id, actor, text, prev)),
    )


def records(db: sqlite3.Connection, *, after: int = 0) -> list[AuditRecord]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq",  # noqa: S608 - constant column list
        (after,),
    ).fetchall()
    return [AuditRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]


def exported(db: sqlite3.Connection, *, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
    """Records after `after` as plain dicts with `details` as the stored JSON text, ready to ship.

    The text, not the parsed value: the key server recomputes each hash over exactly what was hashed.
    """
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608 - constant column list
        (after, limit),
    ).fetchall()
    return [dict(zip(FIELDS, row, strict=True)) for row in rows]


def verify(db: sqlite3.Connection) -> list[str]:
    """Problems found in the chain; an empty list means intact."""
    problems = []
    expected_prev, expected_seq = GENESIS, 1
    rows = db.execute(
        "SELECT seq, at, event, report_id, actor, details, prev_hash, hash FROM audit ORDER BY seq"
    )
    for seq, at, event, report_id, actor, details, prev, stored in rows:
        if seq != expected_seq:
            problems.append(f"record {expected_seq} is missing (next is {seq})")
        if prev != expected_prev:
            problems.append(f"record {seq} does not follow the record before it")
        if digest(seq, at, event, report_id, actor, details, prev) != stored:
            problems.append(f"record {seq} was altered")
        expected_prev, expected_seq = stored, seq + 1
    return problems
