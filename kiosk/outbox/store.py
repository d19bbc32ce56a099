"""The durable outbox: sealed files on disk plus per-destination delivery state in SQLite.

Order of events for one report, each step durable before the next:
1. every sealed file is written atomically into ``outbox/`` (temp, fsync, rename, dir fsync);
2. one SQLite transaction records the deliveries: from here on the report counts as sent;
3. each delivery moves pending -> sending -> delivered (with a receipt) or back to pending with a backoff;
4. when every delivery of a sealed file is delivered, the file is deleted (the wipe).

A crash between 1 and 2 leaves a sealed file no delivery refers to; the nurse was never told "sent", so
it is deleted once it is old enough not to be another process's Send in progress. A crash during
"sending" is retried, which is safe because destinations are idempotent on the report id.

A delivery may carry parameters (JSON), chosen when the report was sent and passed to the destination on
every attempt: e.g. the email recipients a nurse picked, so a retry reaches the same people.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk import audit, fsutil
from kiosk.sealing.sealed_file import EXTENSION, SealedHeader

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 15 * 60.0
ABANDONED_AFTER_SECONDS = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_file (
    path TEXT PRIMARY KEY,
    report_id TEXT NOT NULL,
    header TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery (
    report_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    sealed_path TEXT REFERENCES sealed_file(path),  -- NULL once the file is wiped
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'dropped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    receipt TEXT,
    last_error TEXT,
    queued_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    params TEXT,  -- JSON object given to the destination on every attempt; NULL = none
    PRIMARY KEY (report_id, destination)
);
"""

# Columns added after the first release, created in outbox.sqlite files that predate them.
_ADDED_COLUMNS = {"delivery": {"params": "TEXT"}}


@dataclass(frozen=True)
class Delivery:
    report_id: str
    destination: str
    sealed_path: Path | None
    state: str
    attempts: int
    next_attempt: float
    receipt: str | None
    last_error: str | None
    queued_at: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def recipient_count(self) -> int | None:
        """How many recipients were chosen for this delivery (email), for status pages: not who."""
        chosen = self.params.get("to")
        return len(chosen) if isinstance(chosen, list) else None


class Outbox:
    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "outbox"
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(data_dir / "outbox.sqlite", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA + audit.SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add columns missing from an older outbox.sqlite, keeping its rows (NULL in the new column).

        In a write transaction, so two processes opening the same old file (the station's worker and
        `kiosk send`) add each column once: the second waits for the lock and then sees it. An up-to-date
        file takes no write lock at all.
        """

        def missing(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
            out = []
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                out += [(table, name, kind) for name, kind in columns.items() if name not in have]
            return out

        if not missing(self._db):
            return
        with self._transaction() as db:
            for table, name, kind in missing(db):
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                log.info("outbox database: added column %s.%s", table, name)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def sealed_path(self, report_id: str, variant: int) -> Path:
        return self.folder / f"{report_id}.{variant}{EXTENSION}"

    def enqueue(
        self,
        report_id: str,
        headers: dict[Path, SealedHeader],
        routes: dict[str, Path],
        params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Record deliveries of already-durable sealed files; after this the report is sent.

        ``params`` maps a destination name to its delivery's parameters (omitted: none).
        """
        params = params or {}
        unknown = sorted(set(params) - set(routes))
        if unknown:
            raise ValueError(f"parameters for destinations not queued: {', '.join(unknown)}")
        now = time.time()
        with self._transaction() as db:
            for path, header in headers.items():
                db.execute(
                    "INSERT INTO sealed_file (path, report_id, header) VALUES (?, ?, ?)",
                    (str(path), report_id, json.dumps(header.as_dict())),
                )
            for destination, path in routes.items():
                given = params.get(destination)
                db.execute(
                    "INSERT INTO delivery"
                    " (report_id, destination, sealed_path, state, queued_at, updated_at, params)"
                    " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                    (report_id, destination, str(path), now, now, json.dumps(dict(given)) if given else None),
                )
            audit.append(db, "queued", report_id=report_id, destinations=sorted(routes))
        log.info("report %s queued for %s", report_id, ", ".join(sorted(routes)))

    def recover(self) -> None:
        """At start, before anything is delivered: resume sends that a crash interrupted."""
        with self._transaction() as db:
            db.execute("UPDATE delivery SET state = 'pending' WHERE state = 'sending'")
        self.remove_abandoned()
        self.release_finished()

    def remove_abandoned(self, grace_seconds: float = ABANDONED_AFTER_SECONDS) -> int:
        """Delete sealed or partial files no delivery refers to, once older than ``grace_seconds``.

        A file that young may belong to a Send still in progress in another process (`kiosk send` beside
        the running station): its rename or its queueing is a moment away.
        """
        known = {row[0] for row in self._db.execute("SELECT path FROM sealed_file")}
        cutoff = time.time() - grace_seconds
        removed = 0
        for path in self.folder.iterdir():
            if str(path) in known:
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:  # renamed or removed by its writer meanwhile
                continue
            log.warning("removing abandoned outbox file %s", path.name)
            fsutil.remove_durably(path)
            with self._transaction() as db:
                audit.append(db, "discarded-unqueued", file=path.name)
            removed += 1
        return removed

    def deliveries(self, *, states: tuple[str, ...] | None = None) -> list[Delivery]:
        query = "SELECT report_id, destination, sealed_path, state, attempts, next_attempt, receipt,"
        query += " last_error, queued_at, params FROM delivery"
        params: tuple[str, ...] = ()
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
            params = states
        rows = self._db.execute(query + " ORDER BY queued_at, report_id, destination", params).fetchall()
        return [
            Delivery(
                r[0], r[1], Path(r[2]) if r[2] else None, *r[3:9], params=json.loads(r[9]) if r[9] else {}
            )
            for r in rows
        ]

    def due(self, now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        return [d for d in self.deliveries(states=("pending",)) if d.next_attempt <= now]

    def header(self, sealed_path: Path) -> SealedHeader:
        row = self._db.execute(
            "SELECT header FROM sealed_file WHERE path = ?", (str(sealed_path),)
        ).fetchone()
        return SealedHeader.model_validate_json(row[0])

    def _set(self, delivery: Delivery, audit_event: str | None = None, **fields: object) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._transaction() as db:
            if audit_event:
                audit.append(db, audit_event, report_id=delivery.report_id, destination=delivery.destination)
            db.execute(
                f"UPDATE delivery SET {assignments}, updated_at = ? WHERE report_id = ? AND destination = ?",  # noqa: S608
                (*fields.values(), time.time(), delivery.report_id, delivery.destination),
            )

    def mark_sending(self, delivery: Delivery) -> None:
        self._set(delivery, state="sending")

    def mark_delivered(self, delivery: Delivery, receipt: str) -> None:
        self._set(
            delivery,
            "delivered",
            state="delivered",
            attempts=delivery.attempts + 1,
            receipt=receipt,
            last_error=None,
        )
        log.info("report %s delivered to %s", delivery.report_id, delivery.destination)

    def mark_failed(self, delivery: Delivery, error: str, *, permanent: bool = False) -> None:
        attempts = delivery.attempts + 1
        delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
        self._set(
            delivery,
            "delivery-failed-permanently" if permanent else None,
            state="failed" if permanent else "pending",
            attempts=attempts,
            last_error=error[:500],
            next_attempt=time.time() + delay,
        )
        log.warning(
            "report %s to %s failed (attempt %d): %s",
            delivery.report_id,
            delivery.destination,
            attempts,
            error,
        )

    def retry(self, report_id: str | None = None) -> int:
        query = "UPDATE delivery SET state = 'pending', next_attempt = 0 WHERE state IN ('pending', 'failed')"
        with self._transaction() as db:
            cursor = db.execute(
                query + (" AND report_id = ?" if report_id else ""), (report_id,) if report_id else ()
            )
            return cursor.rowcount

    def drop(self, report_id: str, destination: str | None, *, actor: str) -> int:
        """Give up on deliveries (an admin's decision, audited); their sealed files are then wiped."""
        query = "UPDATE delivery SET state = 'dropped', receipt = 'dropped by ' || ?"
        query += " WHERE report_id = ? AND state NOT IN ('delivered', 'dropped')"
        params: tuple[str, ...] = (actor, report_id)
        if destination:
            query += " AND destination = ?"
            params += (destination,)
        with self._transaction() as db:
            count = db.execute(query, params).rowcount
            if count:
                audit.append(
                    db, "dropped", report_id=report_id, actor=actor, destination=destination or "all"
                )
        self.release_finished()
        return count

    def audit_records(self) -> list[audit.AuditRecord]:
        return audit.records(self._db)

    def verify_audit(self) -> list[str]:
        return audit.verify(self._db)

    def release_finished(self) -> list[str]:
        """Delete every sealed file whose deliveries all succeeded; return their report ids."""
        finished = self._db.execute(
            "SELECT s.path, s.report_id FROM sealed_file s WHERE NOT EXISTS (SELECT 1 FROM delivery d"
            " WHERE d.sealed_path = s.path AND d.state NOT IN ('delivered', 'dropped'))"
        ).fetchall()
        released = []
        for path, report_id in finished:
            fsutil.remove_durably(Path(path))
            with self._transaction() as db:
                db.execute("UPDATE delivery SET sealed_path = NULL WHERE sealed_path = ?", (path,))
                db.execute("DELETE FROM sealed_file WHERE path = ?", (path,))
                audit.append(db, "wiped", report_id=report_id)
            log.info("report %s: sealed file wiped after delivery", report_id)
            released.append(report_id)
        return released
