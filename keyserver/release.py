"""Group commit for key releases: the audit records of concurrent releases share one transaction.

Appends to the audit chain are serialized (one chain, one head), so one transaction per release makes the
chain lock — held through each commit's disk flush — the bottleneck. Here the first request to arrive
becomes the leader: it takes every release waiting in this process, and in ONE write transaction locks
the chain, re-reads the revocation state of those reports, appends one record per release and commits.
Each waiting request learns its outcome only after that commit; if the transaction fails, every request in
it fails and no key is returned. No audit record, no key — for a whole batch at once.

On PostgreSQL (psycopg) the batch's transaction runs on the driver in pipeline mode: BEGIN, chain lock and
revocation read in one round trip, then the multi-row insert, head move and COMMIT in a second — five round
trips become two while the chain lock is held, without SQLAlchemy's per-statement CPU. The revocation read
is a separate statement after the lock statement, so (READ COMMITTED) its snapshot is taken after the lock
is granted and it sees every revocation committed before. A batch with a report not registered yet takes
the general path (it inserts the report).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select

from keyserver import audit
from keyserver.db import driver_connection, psycopg_engine, write
from keyserver.models import reports
from kiosk.sealing.sealed_file import SealedHeader

MAX_BATCH = 128
_REVOKED_MANY = select(reports.c.report_id, reports.c.revoked_at).where(
    reports.c.report_id.in_(bindparam("ids", expanding=True))
)
_PG_REVOKED = "SELECT report_id, revoked_at IS NOT NULL FROM reports WHERE report_id = ANY(%s::text[])"


@dataclass
class Pending:
    actor: str
    action: str
    header: SealedHeader
    details: dict[str, Any]
    # Set once: when the record is committed (or its batch failed), or when this request must lead.
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    seq: int = 0
    revoked: bool = False
    error: BaseException | None = None


class ReleaseBatcher:
    def __init__(self, engine: Engine, insert_report: Any) -> None:
        self._engine = engine
        self._insert_report = insert_report
        self._lock = threading.Lock()
        self._queue: list[Pending] = []
        self._leading = False
        self._fast = psycopg_engine(engine)

    def commit(self, item: Pending) -> Pending:
        """Record this release (or its revocation denial); returns once committed, raises if not.

        A leader writes batches only until its own record is committed, then hands over to the oldest
        waiting request, so no request serves everyone else's records for long under sustained load. Each
        waiting thread sleeps on its own event and is woken exactly once — when its record is committed or
        when it is to lead — not on every batch (a context switch costs tens of µs of CPU on a busy VM).
        """
        with self._lock:
            self._queue.append(item)
            follower = self._leading
            self._leading = True
        if follower:
            item.wake.wait()
        while not item.done:
            with self._lock:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                if not (self._fast and self._write_pg(batch)):
                    with write(self._engine) as conn:
                        self._write(conn, batch)
            except BaseException as exc:  # every request of a failed batch fails: none gets a key
                for pending in batch:
                    pending.error = exc
            successor = None
            with self._lock:
                for pending in batch:
                    pending.done = True
                if item.done:  # own record committed: hand over to the oldest waiting request, if any
                    if self._queue:
                        successor = self._queue[0]
                    else:
                        self._leading = False
            for pending in batch:
                if pending is not item:
                    pending.wake.set()
            if successor is not None:
                successor.wake.set()
        if item.error is not None:
            raise item.error
        return item

    def _write(self, conn: Connection, batch: list[Pending]) -> None:
        head = audit.lock(conn)  # after the lock: sees every revocation committed before it
        ids = sorted({item.header.report_id for item in batch})
        state = {r.report_id: r.revoked_at is not None for r in conn.execute(_REVOKED_MANY, {"ids": ids})}
        for item in batch:
            if item.header.report_id not in state:
                # Sealed offline and not registered yet: the header is authentic (it unwrapped), record it.
                self._insert_report(conn, item.header)
                state[item.header.report_id] = False
                item.details["first_seen"] = True
        for item, seq in zip(batch, audit.append_many(conn, _entries(batch, state), head=head), strict=True):
            item.seq = seq

    def _write_pg(self, batch: list[Pending]) -> bool:
        """The batch in one transaction straight on psycopg; False (nothing written) if a report of the
        batch is not registered yet."""
        ids = sorted({item.header.report_id for item in batch})
        with self._engine.connect() as sa_conn:
            pg = driver_connection(sa_conn)
            try:
                with pg.pipeline():
                    head_cursor = pg.execute(audit.PG_LOCK, prepare=True)
                    state_cursor = pg.execute(_PG_REVOKED, (ids,), prepare=True)
                head = head_cursor.fetchone()
                state = dict(state_cursor.fetchall())
                if len(state) != len(ids):
                    pg.rollback()
                    return False
                rows = audit.chain(_entries(batch, state), head[0], head[1])
                with pg.pipeline():
                    pg.execute(audit.PG_APPEND, audit.pg_append_params(rows), prepare=True)
                    pg.commit()
            except BaseException:
                try:
                    pg.rollback()
                except Exception:
                    sa_conn.invalidate()
                raise
        for item, row in zip(batch, rows, strict=True):
            item.seq = row["seq"]
        return True


def _entries(batch: list[Pending], revoked: dict[str, bool]) -> list[dict[str, Any]]:
    """One audit entry per release, in batch order; marks the revoked ones (denied)."""
    entries = []
    for item in batch:
        item.revoked = revoked[item.header.report_id]
        if item.revoked:
            item.details["reason"] = "revoked"
        entries.append(
            {
                "actor": item.actor,
                "action": item.action,
                "report_id": item.header.report_id,
                "outcome": "denied" if item.revoked else "released",
                "details": item.details,
            }
        )
    return entries


_batchers: weakref.WeakKeyDictionary[Engine, ReleaseBatcher] = weakref.WeakKeyDictionary()
_batchers_lock = threading.Lock()


def batcher(engine: Engine, insert_report: Any) -> ReleaseBatcher:
    with _batchers_lock:
        found = _batchers.get(engine)
        if found is None:
            found = _batchers[engine] = ReleaseBatcher(engine, insert_report)
        return found
