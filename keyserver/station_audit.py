"""The stations' own audit trails, shipped to the key server and kept next to its own audit log.

A station hash-chains its events (sign-in, scan, capture, send, wipe, admin actions; never patient data) in
its outbox database (kiosk/audit.py) and ships them here (kiosk/audit_shipping.py) as
`{"chain": <hash of its seq-1 record>, "records": [...]}`. A station reinstalled on a fresh card starts a
new local chain, so it ships a new chain id: the key server stores it next to the old one (which stays
intact and verifiable) and records the reinstall in its own log (`station.audit`, outcome `new_chain`).

Within a chain the server recomputes every hash with the station's own function and accepts a batch only
if it continues what it already holds, so its copy is the station's chain, byte for byte. A batch is all
or nothing: a tampered record, a gap or a fork stores nothing and is audited as a denial. Records already
stored with the same hash are skipped, so a retry after a lost response is harmless.

Each accepted batch appends a `station.audit` record to the key server's own chain naming the station's
chain and its new head (seq and hash): rewriting a station's stored trail consistently would also mean
rewriting the key server's chain, and `station_trails.verify` notices records cut from the end. Reading
and verifying: keyserver/station_trails.py.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import Connection, select

from keyserver import audit, db
from keyserver import station_trails as trails
from keyserver.api import _audit_denial, _station_call, json_body
from keyserver.app import require, state
from keyserver.models import station_audit, stations
from keyserver.reports import Denied
from keyserver.station_trails import ACTION
from kiosk import audit as station_chain

MAX_BATCH = 1000
MAX_DETAILS = 16_384  # characters of details JSON per record; station events are a few dozen
QUERY_LIMIT = 1000
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


def parse_batch(body: Any) -> tuple[str, list[dict[str, Any]]]:
    """`{"chain": ..., "records": [...]}` → (chain, validated records, consecutive and chained)."""
    if (
        not isinstance(body, dict)
        or set(body) != {"chain", "records"}
        or not isinstance(body["records"], list)
    ):
        raise Denied(400, "malformed_request", 'expected {"chain": "<hash of seq 1>", "records": [...]}')
    chain = body["chain"]
    if not isinstance(chain, str) or not _HASH_RE.match(chain):
        raise Denied(
            400, "malformed_request", "chain is the hash of the chain's seq-1 record (64 hex digits)"
        )
    if len(body["records"]) > MAX_BATCH:
        raise Denied(400, "malformed_request", f"at most {MAX_BATCH} records per request")
    records = [_check_record(i, r) for i, r in enumerate(body["records"])]
    for i in range(1, len(records)):
        before, record = records[i - 1], records[i]
        if record["seq"] != before["seq"] + 1 or record["prev_hash"] != before["hash"]:
            raise _bad(i, record, "records must be consecutive, each following the one before it")
    if records and records[0]["seq"] == 1:
        if records[0]["prev_hash"] != station_chain.GENESIS:
            raise _bad(0, records[0], "a chain's seq 1 follows the all-zero hash")
        if records[0]["hash"] != chain:
            raise _bad(0, records[0], "the hash of seq 1 is not the stated chain id")
    return chain, records


def store(
    conn: Connection, station_id: str, chain: str, records: list[dict[str, Any]]
) -> tuple[int, int, str]:
    """Store the records that continue the chain; returns (accepted, last seq, last hash).

    A chain not stored yet for this station starts here (from seq 1) and is audited as `new_chain`.
    Runs in the caller's write transaction; raises Denied (and the caller rolls back) on any conflict.
    """
    if conn.dialect.name != "sqlite":
        # Serialize two shipments from one station (the worker and `kiosk outbox ship-audit`); SQLite's
        # write transaction (BEGIN IMMEDIATE) already does.
        conn.execute(
            select(stations.c.station_id).where(stations.c.station_id == station_id).with_for_update()
        )
    last_seq, last_hash = trails.head(conn, station_id, chain)
    rows = station_audit.c
    known = [r for r in records if r["seq"] <= last_seq]
    if known:
        stored = dict(
            conn.execute(
                select(rows.seq, rows.hash).where(
                    rows.station_id == station_id,
                    rows.chain == chain,
                    rows.seq.between(known[0]["seq"], known[-1]["seq"]),
                )
            ).all()
        )
        for record in known:
            if stored.get(record["seq"]) != record["hash"]:
                raise Denied(
                    409,
                    "chain_conflict",
                    f"record seq {record['seq']} differs from the one stored for this chain",
                )
    new = [r for r in records if r["seq"] > last_seq]
    if not new:
        return 0, last_seq, last_hash
    if new[0]["seq"] != last_seq + 1:
        holds = f"this chain's records up to seq {last_seq}" if last_seq else "no record of this chain"
        raise Denied(409, "chain_gap", f"the key server has {holds}; send from seq {last_seq + 1}")
    if new[0]["prev_hash"] != last_hash:
        raise Denied(
            409,
            "chain_conflict",
            f"record seq {new[0]['seq']} does not follow the stored record seq {last_seq} (a forked chain)",
        )
    details: dict[str, Any] = {"chain": chain}
    starts = last_seq == 0
    if starts:  # a new installation (or the station's first shipment): name the chain it follows
        details["previous_chain"] = trails.current_chain(conn, station_id)
    received = db.utcnow()
    conn.execute(
        station_audit.insert(),
        [{**r, "station_id": station_id, "chain": chain, "received_at": received} for r in new],
    )
    last_seq, last_hash = new[-1]["seq"], new[-1]["hash"]
    audit.append(
        conn,
        actor=f"station:{station_id}",
        action=ACTION,
        outcome="new_chain" if starts else "ok",
        details={**details, "accepted": len(new), "last_seq": last_seq, "head": last_hash},
    )
    return len(new), last_seq, last_hash


# --- HTTP -------------------------------------------------------------------------------------------------


def _known(conn: Connection, station_id: str) -> None:
    if not trails.known_station(conn, station_id):
        raise Denied(404, "unknown_station", "no such station")


@station_audit_api.post("/stations/audit")
def ship() -> Response:
    """A station ships records of one chain; an empty list just asks where the server's copy ends."""
    station = _station_call(ACTION)
    body = json_body()
    try:
        chain, records = parse_batch(body)
        with db.write(state().engine) as conn:
            accepted, last_seq, last_hash = store(conn, station.name, chain, records)
    except Denied as denied:
        batch = body.get("records") if isinstance(body, dict) else None
        count = len(batch) if isinstance(batch, list) else None
        first = batch[0].get("seq") if count and isinstance(batch[0], dict) else None  # type: ignore[index]
        named = body.get("chain") if isinstance(body, dict) else None
        _audit_denial(
            ACTION,
            denied,
            chain=named if isinstance(named, str) and _HASH_RE.match(named) else None,
            records=count,
            first_seq=first if isinstance(first, int) else None,
        )
        raise
    return jsonify(chain=chain, accepted=accepted, last_seq=last_seq, last_hash=last_hash)


@station_audit_api.get("/stations/<station_id>/audit")
@require(roles=("admin", "auditor"))
def station_records(station_id: str) -> Response:
    """One chain's records (?chain=, default the station's newest installation), ?after=&limit=."""
    try:
        after = int(request.args.get("after", 0))
        limit = max(1, min(int(request.args.get("limit", 200)), QUERY_LIMIT))
    except ValueError as exc:
        raise Denied(400, "malformed_request", "after and limit are integers") from exc
    chain = request.args.get("chain") or None
    if chain is not None and not _HASH_RE.match(chain):
        raise Denied(400, "malformed_request", "chain is a chain id (64 lower-case hex digits)")
    with db.read(state().engine) as conn:
        _known(conn, station_id)
        chain = chain or trails.current_chain(conn, station_id)
        last_seq = trails.head(conn, station_id, chain)[0] if chain else 0
        if chain is not None and last_seq == 0:
            raise Denied(404, "unknown_chain", "the key server holds no such chain for this station")
        records = trails.query(conn, station_id, chain, after=after, limit=limit) if chain else []
    return jsonify(station_id=station_id, chain=chain, last_seq=last_seq, records=records)


@station_audit_api.get("/stations/<station_id>/audit/chains")
@require(roles=("admin", "auditor"))
def station_chains(station_id: str) -> Response:
    with db.read(state().engine) as conn:
        _known(conn, station_id)
        found = trails.chains(conn, station_id)
    return jsonify(
        station_id=station_id, chains=[{k: v for k, v in c.items() if k != "station_id"} for c in found]
    )


@station_audit_api.get("/stations/<station_id>/audit/verify")
@require(roles=("admin", "auditor"))
def station_verify(station_id: str) -> Response:
    with db.read(state().engine) as conn:
        _known(conn, station_id)
        result = trails.verify(conn, station_id)
    return jsonify(result)
