"""Reading and verifying the station audit trails the key server holds (the write path: station_audit.py).

A station's trail is one or more chains. A chain is one installation's local audit database: it starts at
seq 1 after the all-zero hash and is named by the hash of that first record, so a station reinstalled on a
fresh card (same station id) ships a second chain next to the first instead of a conflicting one. Stored
rows are keyed by (station id, chain, seq).

Every accepted batch of a chain is anchored in the key server's own audit log: a `station.audit` record
(outcome `new_chain` for the chain's first batch, `ok` after that) names the chain and its new head.
`verify` recomputes every chain and checks that each still reaches its newest anchor, that no chain lacks
one, and that no anchored chain has vanished. No Flask here: the CLI reads trails without the web app.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, func, select

from keyserver import db
from keyserver.models import audit_log, station_audit, stations
from kiosk import audit as station_chain

ACTION = "station.audit"
ANCHOR_OUTCOMES = ("ok", "new_chain")  # outcomes of the records that anchor an accepted batch

_rows = station_audit.c


def head(conn: Connection, station_id: str, chain: str) -> tuple[int, str]:
    """(seq, hash) of the chain's newest stored record; (0, GENESIS) for a chain not stored yet."""
    row = conn.execute(
        select(_rows.seq, _rows.hash)
        .where(_rows.station_id == station_id, _rows.chain == chain)
        .order_by(_rows.seq.desc())
        .limit(1)
    ).first()
    return (row.seq, row.hash) if row else (0, station_chain.GENESIS)


def chains(conn: Connection, station_id: str | None = None) -> list[dict[str, Any]]:
    """One summary per stored chain (of one station, or of every station), oldest installation first.

    `first_at`/`last_at` are the earliest and latest station times (Unix seconds, the station's clock);
    `first_received_at`/`last_received_at` the key server's.
    """
    stmt = select(
        _rows.station_id,
        _rows.chain,
        func.min(_rows.seq).label("first_seq"),
        func.max(_rows.seq).label("last_seq"),
        func.count().label("records"),
        func.min(_rows.at).label("first_at"),
        func.max(_rows.at).label("last_at"),
        func.min(_rows.received_at).label("first_received_at"),
        func.max(_rows.received_at).label("last_received_at"),
    ).group_by(_rows.station_id, _rows.chain)
    if station_id is not None:
        stmt = stmt.where(_rows.station_id == station_id)
    stmt = stmt.order_by(_rows.station_id, func.min(_rows.received_at), _rows.chain)
    out = []
    for row in conn.execute(stmt).mappings():
        info = dict(row)
        for name in ("first_received_at", "last_received_at"):
            info[name] = db.aware(info[name]).isoformat()  # type: ignore[union-attr]
        out.append(info)
    return out


def current_chain(conn: Connection, station_id: str) -> str | None:
    """The station's newest installation: the chain whose records began arriving last (None: no trail)."""
    found = chains(conn, station_id)
    return str(found[-1]["chain"]) if found else None


def _public(row: Any) -> dict[str, Any]:
    record = {f: row[f] for f in station_chain.FIELDS}
    record["received_at"] = db.aware(row["received_at"]).isoformat()  # type: ignore[union-attr]
    return record


def query(
    conn: Connection,
    station_id: str,
    chain: str,
    *,
    after: int = 0,
    limit: int = 200,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """A chain's stored records after seq `after`; `details` is the JSON text the station hashed."""
    order = _rows.seq.desc() if newest_first else _rows.seq
    rows = conn.execute(
        select(station_audit)
        .where(_rows.station_id == station_id, _rows.chain == chain, _rows.seq > after)
        .order_by(order)
        .limit(limit)
    ).mappings()
    return [_public(r) for r in rows]


def known_station(conn: Connection, station_id: str) -> bool:
    enrolled = conn.execute(select(stations.c.station_id).where(stations.c.station_id == station_id)).first()
    if enrolled is not None:
        return True
    return conn.execute(select(_rows.seq).where(_rows.station_id == station_id).limit(1)).first() is not None


def anchors(conn: Connection, station_id: str) -> dict[str, tuple[int, int, str]]:
    """Per chain: (key server audit seq, station seq, station hash) of its newest accepted batch."""
    rows = conn.execute(
        select(audit_log.c.seq, audit_log.c.details)
        .where(
            audit_log.c.actor == f"station:{station_id}",
            audit_log.c.action == ACTION,
            audit_log.c.outcome.in_(ANCHOR_OUTCOMES),
        )
        .order_by(audit_log.c.seq.desc())
    )
    found: dict[str, tuple[int, int, str]] = {}
    for row in rows:
        details = json.loads(row.details)
        found.setdefault(str(details["chain"]), (row.seq, int(details["last_seq"]), str(details["head"])))
    return found


def verify_chain(
    conn: Connection,
    station_id: str,
    chain: str,
    anchor: tuple[int, int, str] | None,
    *,
    max_problems: int = 20,
) -> dict[str, Any]:
    """Recompute one stored chain and check it still reaches the head the server last accepted."""
    problems: list[str] = []
    expected_seq, prev, count, anchor_found = 1, station_chain.GENESIS, 0, False
    rows = conn.execute(
        select(station_audit).where(_rows.station_id == station_id, _rows.chain == chain).order_by(_rows.seq)
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
        if seq == 1 and row["hash"] != chain:
            problems.append("seq 1: its hash is not the chain's id (first record replaced)")
        anchor_found = anchor_found or (anchor is not None and (seq, row["hash"]) == anchor[1:])
        expected_seq, prev = seq + 1, row["hash"]
        if len(problems) >= max_problems:
            break
    if len(problems) < max_problems:
        if anchor is None:
            problems.append("the key server's audit log never accepted this chain (stored outside the API)")
        elif not anchor_found:
            problems.append(
                f"key server audit seq {anchor[0]} accepted this chain up to seq {anchor[1]}, "
                "which is missing or changed (records removed or rewritten)"
            )
    return {
        "chain": chain,
        "ok": not problems,
        "records": count,
        "head_seq": expected_seq - 1,
        "head_hash": prev,
        "anchored_seq": anchor[1] if anchor else 0,
        "problems": problems,
    }


def verify(conn: Connection, station_id: str, *, max_problems: int = 20) -> dict[str, Any]:
    """Verify every chain of the station: those stored, and those the audit log says were accepted."""
    anchored = anchors(conn, station_id)
    stored = [str(c["chain"]) for c in chains(conn, station_id)]
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    for chain in stored + [c for c in anchored if c not in stored]:  # then chains removed entirely
        result = verify_chain(conn, station_id, chain, anchored.get(chain), max_problems=max_problems)
        results.append(result)
        problems += [f"chain {chain[:16]}: {p}" for p in result["problems"]]
    return {
        "station_id": station_id,
        "ok": not problems,
        "records": sum(r["records"] for r in results),
        "chains": results,
        "problems": problems[:max_problems],
    }


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def page_context(
    conn: Connection, station_id: str | None, chain: str | None, *, limit: int = 50
) -> dict[str, Any] | None:
    """What the station trails page shows; None when the chosen station or chain does not exist.

    Every stored chain; for a chosen station, its verification and the newest records of the chosen
    chain (default: its newest installation).
    """
    every = [{**c, "first_time": _utc(c["first_at"]), "last_time": _utc(c["last_at"])} for c in chains(conn)]
    context: dict[str, Any] = {"chains": every, "station_id": station_id, "chain": None, "records": []}
    if station_id is None:
        return context
    if not known_station(conn, station_id):
        return None
    chain = chain or current_chain(conn, station_id)
    if chain is not None:
        if head(conn, station_id, chain)[0] == 0:
            return None
        records = query(conn, station_id, chain, limit=limit, newest_first=True)
        context["records"] = [{**r, "time": _utc(r["at"])} for r in records]
    context["chain"] = chain
    context["verify"] = verify(conn, station_id)
    return context
