"""The stations' own audit trails, shipped to the key server and kept next to its own audit log.

A station hash-chains its events (sign-in, scan, capture, send, wipe, admin actions; never patient data) in
its outbox database (kiosk/audit.py) and ships them here (kiosk/audit_shipping.py). The server recomputes
every hash with the station's own function and accepts a batch only if it continues the chain already
stored for that station, so the copy here is the station's chain, byte for byte. A batch is all or
nothing: a tampered record, a gap or a fork stores nothing and is audited as a denial. Records already
stored with the same hash are skipped, so a retry after a lost response is harmless.

Each accepted batch appends a `station.audit` record to the key server's own chain naming the station's
new head (seq and hash): rewriting a station's stored trail consistently would also mean rewriting the
key server's chain, and `verify` notices records cut from the end.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import Connection, select

from keyserver import audit, db
from keyserver.api import _audit_denial, _station_call, json_body
from keyserver.app import require, state
from keyserver.models import audit_log, station_audit, stations
from keyserver.reports import Denied
from kiosk import audit as station_chain

MAX_BATCH = 1000
MAX_DETAILS = 16_384  # characters of details JSON per record; station events are a few dozen
QUERY_LIMIT = 1000
ACTION = "station.audit"
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_LIMITS = {"event": 64, "report_id": 64, "actor": 128}

station_audit_api = Blueprint("station_audit", __name__, url_prefix="/v1")


def _bad(index: int, record: Any, why: str) -> Denied:
    seq = record.get("seq") if isinstance(record, dict) else None
    where = f"record {index}" + (f" (seq {seq})" if isinstance(seq, int) else "")
    return Denied(400, "bad_record", f"{where}: {why}")


def _text(value: Any, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


def _check_record(index: int, record: Any) -> dict[str, Any]:
    """One shipped record, validated field by field and against its own hash."""
    if not isinstance(record, dict) or set(record) != set(station_chain.FIELDS):
        raise _bad(index, record, f"a record has exactly the fields {', '.join(station_chain.FIELDS)}")
    seq, at = record["seq"], record["at"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**31:
        raise _bad(index, record, "seq is a positive integer")
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise _bad(index, record, "at is a Unix time in seconds")
    for name in ("event", "actor"):
        if not _text(record[name], _LIMITS[name]):
            raise _bad(index, record, f"{name} is a string of 1 to {_LIMITS[name]} characters")
    if record["report_id"] is not None and not _text(record["report_id"], _LIMITS["report_id"]):
        raise _bad(index, record, "report_id is null or a string of up to 64 characters")
    details = record["details"]
    if not isinstance(details, str) or len(details) > MAX_DETAILS:
        raise _bad(index, record, f"details is JSON text of up to {MAX_DETAILS} characters")
    try:
        parsed = json.loads(details)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(index, record, "details is the JSON text of an object")
    if not all(isinstance(record[h], str) and _HASH_RE.match(record[h]) for h in ("prev_hash", "hash")):
        raise _bad(index, record, "prev_hash and hash are 64 lower-case hex digits")
    checked = {**record, "at": float(at)}  # the station stores REAL: its hash covers repr(float)
    fields = [checked[f] for f in station_chain.FIELDS[:-1]]
    if station_chain.digest(*fields) != record["hash"]:
        raise _bad(index, record, "the hash does not match the record (altered in transit or on the station)")
    return checked


def parse_batch(body: Any) -> list[dict[str, Any]]:
    """`{"records": [...]}` → validated records, consecutive and chained among themselves."""
    if not isinstance(body, dict) or set(body) != {"records"} or not isinstance(body["records"], list):
        raise Denied(400, "malformed_request", 'expected {"records": [...]}')
    if len(body["records"]) > MAX_BATCH:
        raise Denied(400, "malformed_request", f"at most {MAX_BATCH} records per request")
    records = [_check_record(i, r) for i, r in enumerate(body["records"])]
    for i in range(1, len(records)):
        before, record = records[i - 1], records[i]
        if record["seq"] != before["seq"] + 1 or record["prev_hash"] != before["hash"]:
            raise _bad(i, record, "records must be consecutive, each following the one before it")
    return records


def head(conn: Connection, station_id: str) -> tuple[int, str]:
    """(seq, hash) of the station's newest stored record; (0, GENESIS) before the first."""
    row = conn.execute(
        select(station_audit.c.seq, station_audit.c.hash)
        .where(station_audit.c.station_id == station_id)
        .order_by(station_audit.c.seq.desc())
        .limit(1)
    ).first()
    return (row.seq, row.hash) if row else (0, station_chain.GENESIS)


def store(conn: Connection, station_id: str, records: list[dict[str, Any]]) -> tuple[int, int, str]:
    """Store the records that continue the station's chain; returns (accepted, last seq, last hash).

    Runs in the caller's write transaction; raises Denied (and the caller rolls back) on any conflict.
    """
    if conn.dialect.name != "sqlite":
        # Serialize two shipments from one station (the worker and `kiosk outbox ship-audit`); SQLite's
        # write transaction (BEGIN IMMEDIATE) already does.
        conn.execute(
            select(stations.c.station_id).where(stations.c.station_id == station_id).with_for_update()
        )
    last_seq, last_hash = head(conn, station_id)
    known = [r for r in records if r["seq"] <= last_seq]
    if known:
        stored = dict(
            conn.execute(
                select(station_audit.c.seq, station_audit.c.hash).where(
                    station_audit.c.station_id == station_id,
                    station_audit.c.seq.between(known[0]["seq"], known[-1]["seq"]),
                )
            ).all()
        )
        for record in known:
            if stored.get(record["seq"]) != record["hash"]:
                raise Denied(
                    409,
                    "chain_conflict",
                    f"record seq {record['seq']} differs from the one stored for this station",
                )
    new = [r for r in records if r["seq"] > last_seq]
    if not new:
        return 0, last_seq, last_hash
    if new[0]["seq"] != last_seq + 1:
        raise Denied(
            409,
            "chain_gap",
            f"the key server has this station's records up to seq {last_seq}; send from seq {last_seq + 1}",
        )
    if new[0]["prev_hash"] != last_hash:
        raise Denied(
            409,
            "chain_conflict",
            f"record seq {new[0]['seq']} does not follow the stored record seq {last_seq} "
            "(a different chain)",
        )
    received = db.utcnow()
    conn.execute(
        station_audit.insert(), [{**r, "station_id": station_id, "received_at": received} for r in new]
    )
    last_seq, last_hash = new[-1]["seq"], new[-1]["hash"]
    audit.append(
        conn,
        actor=f"station:{station_id}",
        action=ACTION,
        outcome="ok",
        details={"accepted": len(new), "last_seq": last_seq, "head": last_hash},
    )
    return len(new), last_seq, last_hash


def _public(row: Any) -> dict[str, Any]:
    record = {f: row[f] for f in station_chain.FIELDS}
    record["received_at"] = db.aware(row["received_at"]).isoformat()  # type: ignore[union-attr]
    return record


def query(conn: Connection, station_id: str, *, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
    """Stored records after seq `after`, oldest first; `details` is the JSON text the station hashed."""
    rows = conn.execute(
        select(station_audit)
        .where(station_audit.c.station_id == station_id, station_audit.c.seq > after)
        .order_by(station_audit.c.seq)
        .limit(limit)
    ).mappings()
    return [_public(r) for r in rows]


def known_station(conn: Connection, station_id: str) -> bool:
    enrolled = conn.execute(select(stations.c.station_id).where(stations.c.station_id == station_id)).first()
    return enrolled is not None or head(conn, station_id)[0] > 0


def _anchor(conn: Connection, station_id: str) -> tuple[int, int, str] | None:
    """(key server audit seq, station seq, station hash) of the newest accepted batch, if any."""
    row = conn.execute(
        select(audit_log.c.seq, audit_log.c.details)
        .where(
            audit_log.c.actor == f"station:{station_id}",
            audit_log.c.action == ACTION,
            audit_log.c.outcome == "ok",
        )
        .order_by(audit_log.c.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    details = json.loads(row.details)
    return row.seq, int(details["last_seq"]), str(details["head"])


def verify(conn: Connection, station_id: str, *, max_problems: int = 20) -> dict[str, Any]:
    """Recompute the station's stored chain; also check it still reaches the head the server accepted."""
    anchor = _anchor(conn, station_id)
    problems: list[str] = []
    expected_seq, prev, count, anchor_found = 1, station_chain.GENESIS, 0, False
    rows = conn.execute(
        select(station_audit).where(station_audit.c.station_id == station_id).order_by(station_audit.c.seq)
    ).mappings()
    for row in rows:
        count += 1
        seq = row["seq"]
        if seq != expected_seq:
            problems.append(f"seq {seq}: expected seq {expected_seq} (records deleted or inserted)")
        if row["prev_hash"] != prev:
            problems.append(f"seq {seq}: prev_hash does not match the previous record")
        if station_chain.digest(*(row[f] for f in station_chain.FIELDS[:-1])) != row["hash"]:
            problems.append(f"seq {seq}: content does not match its hash (record edited)")
        anchor_found = anchor_found or (anchor is not None and (seq, row["hash"]) == anchor[1:])
        expected_seq, prev = seq + 1, row["hash"]
        if len(problems) >= max_problems:
            break
    if anchor is not None and not anchor_found and len(problems) < max_problems:
        problems.append(
            f"key server audit seq {anchor[0]} accepted this station's records up to seq {anchor[1]}, "
            "which is missing or changed (records removed or rewritten)"
        )
    return {
        "station_id": station_id,
        "ok": not problems,
        "records": count,
        "head_seq": expected_seq - 1,
        "head_hash": prev,
        "anchored_seq": anchor[1] if anchor else 0,
        "problems": problems,
    }


# --- HTTP -------------------------------------------------------------------------------------------------


@station_audit_api.post("/stations/audit")
def ship() -> Response:
    """A station ships its records; an empty list just asks where the server's copy ends."""
    station = _station_call(ACTION)
    body = json_body()
    try:
        records = parse_batch(body)
        with db.write(state().engine) as conn:
            accepted, last_seq, last_hash = store(conn, station.name, records)
    except Denied as denied:
        batch = body.get("records") if isinstance(body, dict) else None
        count = len(batch) if isinstance(batch, list) else None
        first = batch[0].get("seq") if count and isinstance(batch[0], dict) else None  # type: ignore[index]
        _audit_denial(ACTION, denied, records=count, first_seq=first if isinstance(first, int) else None)
        raise
    return jsonify(accepted=accepted, last_seq=last_seq, last_hash=last_hash)


@station_audit_api.get("/stations/<station_id>/audit")
@require(roles=("admin", "auditor"))
def station_records(station_id: str) -> Response:
    try:
        after = int(request.args.get("after", 0))
        limit = max(1, min(int(request.args.get("limit", 200)), QUERY_LIMIT))
    except ValueError as exc:
        raise Denied(400, "malformed_request", "after and limit are integers") from exc
    with db.read(state().engine) as conn:
        if not known_station(conn, station_id):
            raise Denied(404, "unknown_station", "no such station")
        records = query(conn, station_id, after=after, limit=limit)
        last_seq = head(conn, station_id)[0]
    return jsonify(station_id=station_id, last_seq=last_seq, records=records)


@station_audit_api.get("/stations/<station_id>/audit/verify")
@require(roles=("admin", "auditor"))
def station_verify(station_id: str) -> Response:
    with db.read(state().engine) as conn:
        if not known_station(conn, station_id):
            raise Denied(404, "unknown_station", "no such station")
        result = verify(conn, station_id)
    return jsonify(result)
