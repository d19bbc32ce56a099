"""Ships the station's audit trail (kiosk/audit.py) to the key server, which keeps a verified copy.

The station's records stay where they are. Each batch names its chain: the hash of the local seq-1
record, which differs between installations, so a station reinstalled on a fresh card (new outbox.sqlite)
ships a new chain from seq 1 that the key server keeps next to the old one. A one-row table
`audit_shipped` in outbox.sqlite remembers the chain and the last seq the key server confirmed, and moves
only after it confirmed; a pointer left from another chain counts as nothing shipped. The server skips
records it already holds with the same hash, so resending after a lost answer is harmless: any record that
differs from the server's copy of the chain (a forked or rewritten chain) is refused there, not silently
skipped here.

The outbox worker calls an AuditShipper after each round. Shipping never blocks sealing (it runs on the
worker's thread, on its own database connection), and a key server that cannot be reached only postpones
it: the shipper backs off and tries again later. `kiosk outbox ship-audit` ships by hand and shows why it
cannot; `kiosk doctor` reports the backlog.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from kiosk import audit
from kiosk.keyserver_client import KeyServerError, StationClient

log = logging.getLogger(__name__)

BATCH = 500  # records per request; the key server takes at most 1000
DATABASE = "outbox.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_shipped (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    shipped_at REAL NOT NULL,
    chain TEXT
);
"""
RETRY_MIN_SECONDS = 30.0
MIN_INTERVAL_SECONDS = 5.0  # rounds come every 50 ms while deliveries are due; shipping need not
RETRY_MAX_SECONDS = 600.0


class BrokenChain(ValueError):
    """The local chain cannot be shipped (its seq-1 record is gone); `kiosk outbox audit` shows more."""


def transient(exc: BaseException) -> bool:
    """Worth retrying later by itself: the network or the server's health, not a refusal."""
    if isinstance(exc, KeyServerError):
        return exc.status == 0 or exc.status == 429 or exc.status >= 500
    return isinstance(exc, OSError)  # timeouts and resets while reading the answer


def _has_chain_column(db: sqlite3.Connection) -> bool:
    return "chain" in {row[1] for row in db.execute("PRAGMA table_info(audit_shipped)")}


def _connect(data_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(data_dir / DATABASE, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(audit.SCHEMA + SCHEMA)
    if not _has_chain_column(db):  # a table from before chains were named: its pointer is this chain's
        try:
            db.execute("ALTER TABLE audit_shipped ADD COLUMN chain TEXT")
        except sqlite3.OperationalError:  # another connection (worker or CLI) added it just now
            if not _has_chain_column(db):
                raise
    return db


def chain_id(db: sqlite3.Connection) -> str | None:
    """The local chain's id (the hash of its seq-1 record); None before the first record."""
    row = db.execute("SELECT hash FROM audit WHERE seq = 1").fetchone()
    return str(row[0]) if row else None


def shipped_seq(db: sqlite3.Connection, chain: str | None) -> int:
    """The last seq of `chain` the key server confirmed; 0 when the pointer belongs to another chain."""
    query = (
        "SELECT last_seq, chain FROM audit_shipped WHERE id = 1"
        if _has_chain_column(db)
        else "SELECT last_seq, NULL FROM audit_shipped WHERE id = 1"
    )
    row = db.execute(query).fetchone()
    if row is None or (row[1] is not None and row[1] != chain):
        return 0
    return int(row[0])


def _confirm(db: sqlite3.Connection, chain: str, seq: int, *, force: bool = False) -> None:
    """Move the pointer: only forward within a chain, unless the server turned out to hold less (`force`)."""
    db.execute(
        "INSERT INTO audit_shipped (id, last_seq, shipped_at, chain) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET last_seq = CASE WHEN ? OR chain IS NOT excluded.chain "
        "THEN excluded.last_seq ELSE MAX(last_seq, excluded.last_seq) END, "
        "shipped_at = excluded.shipped_at, chain = excluded.chain",
        (seq, time.time(), chain, force),
    )


def ship(data_dir: Path, client: StationClient, *, batch: int = BATCH) -> int:
    """Ship every record the key server has not confirmed yet; returns how many it newly accepted.

    Raises KeyServerError (or OSError on a broken connection) when it stops early; what was confirmed
    before that stays confirmed. `transient(exc)` tells a network problem (try later) from a refusal
    (a disabled station, a chain that differs from the server's copy: a person must look).
    """
    db = _connect(data_dir)
    try:
        chain = chain_id(db)
        if chain is None:
            if db.execute("SELECT 1 FROM audit LIMIT 1").fetchone():
                raise BrokenChain("the station's audit chain has no seq-1 record; it cannot be shipped")
            return 0  # nothing recorded yet
        pointer, accepted, resynced = shipped_seq(db, chain), 0, False
        while records := audit.exported(db, after=pointer, limit=batch):
            try:
                answer = client.ship_audit(chain, records)
            except KeyServerError as exc:
                if exc.reason != "chain_gap" or resynced:
                    raise
                # The server holds less of this chain than it once confirmed (restored from a backup,
                # say): resume from where its copy ends.
                held = int(client.ship_audit(chain, [])["last_seq"])
                pointer, resynced = min(pointer, held), True
                _confirm(db, chain, pointer, force=True)
                continue
            accepted += int(answer["accepted"])
            pointer = records[-1]["seq"]
            _confirm(db, chain, pointer)
        return accepted
    finally:
        db.close()


@dataclass(frozen=True)
class Backlog:
    unshipped: int
    oldest_at: float | None  # station time of the oldest record not confirmed yet
    shipped_seq: int


def backlog(data_dir: Path) -> Backlog:
    """How far shipping is behind; reads only (no tables are created, nothing is sent)."""
    path = data_dir / DATABASE
    if not path.exists():
        return Backlog(0, None, 0)
    db = sqlite3.connect(path, timeout=10.0)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "audit" not in tables:
            return Backlog(0, None, 0)
        pointer = shipped_seq(db, chain_id(db)) if "audit_shipped" in tables else 0
        count, oldest = db.execute("SELECT COUNT(*), MIN(at) FROM audit WHERE seq > ?", (pointer,)).fetchone()
        return Backlog(int(count), oldest, pointer)
    finally:
        db.close()


class AuditShipper:
    """The outbox worker's after-round hook: ships new records, backing off while the server is away."""

    def __init__(
        self, data_dir: Path, client: StationClient, *, min_interval: float = MIN_INTERVAL_SECONDS
    ) -> None:
        self._data_dir, self._client, self._min_interval = data_dir, client, min_interval
        self._retry_at = 0.0
        self._delay = 0.0
        self._last_problem = ""

    def __call__(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            ship(self._data_dir, self._client)
        except (KeyServerError, OSError, sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            self._delay = min(RETRY_MAX_SECONDS, max(RETRY_MIN_SECONDS, self._delay * 2))
            self._retry_at = time.monotonic() + self._delay
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._last_problem:  # once per kind of trouble, not every round
                level = logging.INFO if transient(exc) else logging.WARNING
                log.log(level, "audit shipping postponed (%s); retrying in %.0f s", problem, self._delay)
            self._last_problem = problem
            return
        if self._last_problem:
            log.info("audit shipping resumed")
        self._delay, self._last_problem = 0.0, ""
        self._retry_at = time.monotonic() + self._min_interval


def shipper(data_dir: Path, client: StationClient | None) -> AuditShipper | None:
    """The hook for an enrolled station; None before enrollment (the trail then stays on the station)."""
    return AuditShipper(data_dir, client) if client is not None else None
