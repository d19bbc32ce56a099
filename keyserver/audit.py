"""The audit log: an append-only hash chain. No audit record, no key.

Each record's hash is SHA-256 over the canonical JSON of its fields and the previous record's hash, so
editing, inserting or deleting any record breaks the chain from there on; the head row (last seq and hash)
also catches records cut from the end. Appends are serialized — ``SELECT ... FOR UPDATE`` on the head row on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite (see db.write) — so two concurrent appends never share a seq.

A writer with full database access could rewrite the whole chain; the defence is to copy the head hash
(``keyserver audit verify`` prints it) somewhere else from time to time and compare.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from keyserver.models import audit_head, audit_log
from kiosk.sealing.envelope import canonical_json

GENESIS = "0" * 64
FIELDS = ("seq", "at", "actor", "action", "report_id", "outcome", "details", "prev_hash", "hash")


def record_hash(row: dict[str, Any]) -> str:
    canonical = {k: row[k] for k in ("seq", "at", "actor", "action", "report_id", "outcome", "details")}
    canonical["prev_hash"] = row["prev_hash"]
    return hashlib.sha256(canonical_json(canonical)).hexdigest()


def timestamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Hot-path statements, built once (building a statement costs more CPU than executing it).
_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_INSERT = audit_log.insert()
_MOVE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_COLUMNS = ("seq", "at", "actor", "action", "report_id", "outcome", "details", "prev_hash", "hash")
# PostgreSQL: insert and head update in one statement (a data-modifying CTE), one round trip less while
# the chain is locked.
_INSERT_AND_MOVE = _MOVE_HEAD.add_cte(
    audit_log.insert().values({c: bindparam(f"v_{c}") for c in _COLUMNS}).cte("appended")
)


def lock(conn: Connection) -> Any:
    """Take the chain lock for the rest of the transaction and return the head (seq, hash).

    Call it first when a decision must see every change committed before this record (e.g. a revocation).
    """
    return conn.execute(_HEAD if conn.dialect.name == "sqlite" else _HEAD_FOR_UPDATE).one()


def append(
    conn: Connection,
    *,
    actor: str,
    action: str,
    outcome: str,
    report_id: str | None = None,
    details: dict[str, Any] | None = None,
    head: Any = None,
) -> int:
    """Append one record inside the caller's write transaction; returns its seq.

    The caller commits; if anything fails before the commit, the record and whatever it guards roll back.
    """
    entry = {"actor": actor, "action": action, "outcome": outcome, "report_id": report_id, "details": details}
    return append_many(conn, [entry], head=head)[0]


def append_many(conn: Connection, entries: list[dict[str, Any]], *, head: Any = None) -> list[int]:
    """Append several records (chained in order) with one insert and one head update; returns their seqs."""
    if not entries:
        return []
    head = head or lock(conn)
    rows = chain(entries, head.seq, head.hash)
    seq, prev = rows[-1]["seq"], rows[-1]["hash"]
    if conn.dialect.name == "postgresql" and len(rows) == 1:
        params = {f"v_{c}": rows[0][c] for c in _COLUMNS}
        conn.execute(_INSERT_AND_MOVE, {**params, "new_seq": seq, "new_hash": prev})
    else:
        conn.execute(_INSERT, rows)
        conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
    return [r["seq"] for r in rows]


def chain(entries: list[dict[str, Any]], seq: int, prev: str) -> list[dict[str, Any]]:
    """The records for these entries, chained after the head (seq, prev); the caller holds the chain lock."""
    rows = []
    for entry in entries:
        seq += 1
        row = {
            "seq": seq,
            "at": timestamp(),
            "actor": entry["actor"][:128],
            "action": entry["action"],
            "report_id": entry.get("report_id"),
            "outcome": entry["outcome"],
            "details": canonical_json(entry.get("details") or {}).decode(),
            "prev_hash": prev,
        }
        row["hash"] = prev = record_hash(row)
        rows.append(row)
    return rows


@dataclass
class VerifyResult:
    ok: bool
    records: int
    head_hash: str
    problems: list[str]


def verify(conn: Connection, *, max_problems: int = 20) -> VerifyResult:
    """Walk the whole chain in seq order; report every break (up to max_problems)."""
    problems: list[str] = []
    expected_seq, prev = 1, GENESIS
    count = 0
    for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings():
        count += 1
        if row["seq"] != expected_seq:
            problems.append(f"seq {row['seq']}: expected seq {expected_seq} (records deleted or inserted)")
        if row["prev_hash"] != prev:
            problems.append(f"seq {row['seq']}: prev_hash does not match the previous record")
        if record_hash(dict(row)) != row["hash"]:
            problems.append(f"seq {row['seq']}: content does not match its hash (record edited)")
        expected_seq, prev = row["seq"] + 1, row["hash"]
        if len(problems) >= max_problems:
            break
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).mappings().one()
    if len(problems) < max_problems and (head["seq"] != expected_seq - 1 or head["hash"] != prev):
        problems.append(
            f"chain head says seq {head['seq']}, log ends at {expected_seq - 1} (records removed)"
        )
    return VerifyResult(ok=not problems, records=count, head_hash=head["hash"], problems=problems)


def query(
    conn: Connection,
    *,
    report_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    after_seq: int = 0,
    limit: int = 200,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    stmt = select(audit_log).where(audit_log.c.seq > after_seq)
    if report_id:
        stmt = stmt.where(audit_log.c.report_id == report_id)
    if actor:
        stmt = stmt.where(audit_log.c.actor == actor)
    if action:
        stmt = stmt.where(audit_log.c.action == action)
    order = audit_log.c.seq.desc() if newest_first else audit_log.c.seq
    return [_public(r) for r in conn.execute(stmt.order_by(order).limit(limit)).mappings()]


def iter_all(conn: Connection, batch: int = 1000) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = query(conn, after_seq=last, limit=batch)
        if not rows:
            return
        yield from rows
        last = rows[-1]["seq"]


def _public(row: Any) -> dict[str, Any]:
    record = {k: row[k] for k in FIELDS}
    record["details"] = json.loads(record["details"])
    return record


def to_csv(records: Iterable[dict[str, Any]]) -> str:
    """CSV with details as canonical JSON text, so an external tool can recompute every hash."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(FIELDS), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "details": canonical_json(record["details"]).decode()})
    return out.getvalue()


def to_json(records: Iterable[dict[str, Any]]) -> str:
    return json.dumps({"records": list(records)}, indent=1, sort_keys=True)
