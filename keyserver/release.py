"""Group commit for key releases: the audit records of concurrent releases share one transaction.

Appends to the audit chain are serialized (one chain, one head), so one transaction per release makes the
chain lock — held through each commit's disk flush — the bottleneck. Here the first request to arrive
becomes the leader: it takes every release waiting in this process, and in ONE write transaction locks
the chain, re-reads the revocation state of those reports, appends one record per release and commits.
Each waiting request learns its outcome only after that commit; if the transaction fails, every request in
it fails and no key is returned. No audit record, no key — for a whole batch at once.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select

from keyserver import audit
from keyserver.db import write
from keyserver.models import reports
from kiosk.sealing.sealed_file import SealedHeader

MAX_BATCH = 128
_REVOKED_MANY = select(reports.c.report_id, reports.c.revoked_at).where(
    reports.c.report_id.in_(bindparam("ids", expanding=True))
)


@dataclass
class Pending:
    actor: str
    action: str
    header: SealedHeader
    details: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    seq: int = 0
    revoked: bool = False
    error: BaseException | None = None


class ReleaseBatcher:
    def __init__(self, engine: Engine, insert_report: Any) -> None:
        self._engine = engine
        self._insert_report = insert_report
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._leading = False

    def commit(self, item: Pending) -> Pending:
        """Record this release (or its revocation denial); returns once committed, raises if not.

        A leader writes batches only until its own record is committed, then hands over to a waiting
        thread, so no request serves everyone else's records for long under sustained load.
        """
        with self._cond:
            self._queue.append(item)
        while True:
            with self._cond:
                while self._leading and not item.done.is_set():
                    self._cond.wait()
                if item.done.is_set():
                    break
                self._leading = True
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                with write(self._engine) as conn:
                    self._write(conn, batch)
            except BaseException as exc:  # every request of a failed batch fails: none gets a key
                for pending in batch:
                    pending.error = exc
            with self._cond:
                for pending in batch:
                    pending.done.set()
                self._leading = False
                self._cond.notify_all()
        if item.error is not None:
            raise item.error
        return item

    def _write(self, conn: Connection, batch: list[Pending]) -> None:
        head = audit.lock(conn)  # after the lock: sees every revocation committed before it
        ids = sorted({item.header.report_id for item in batch})
        state = {r.report_id: r.revoked_at for r in conn.execute(_REVOKED_MANY, {"ids": ids})}
        entries = []
        for item in batch:
            report_id = item.header.report_id
            if report_id not in state:
                # Sealed offline and not registered yet: the header is authentic (it unwrapped), record it.
                self._insert_report(conn, item.header)
                state[report_id] = None
                item.details["first_seen"] = True
            item.revoked = state[report_id] is not None
            if item.revoked:
                item.details["reason"] = "revoked"
            entries.append(
                {
                    "actor": item.actor,
                    "action": item.action,
                    "report_id": report_id,
                    "outcome": "denied" if item.revoked else "released",
                    "details": item.details,
                }
            )
        for item, seq in zip(batch, audit.append_many(conn, entries, head=head), strict=True):
            item.seq = seq


_batchers: weakref.WeakKeyDictionary[Engine, ReleaseBatcher] = weakref.WeakKeyDictionary()
_batchers_lock = threading.Lock()


def batcher(engine: Engine, insert_report: Any) -> ReleaseBatcher:
    with _batchers_lock:
        found = _batchers.get(engine)
        if found is None:
            found = _batchers[engine] = ReleaseBatcher(engine, insert_report)
        return found
