"""Station audit events (sign-in, session end, sends, admin actions) in the outbox database's audit chain.

Same hash chain as the outbox's own records (kiosk.audit), written on a connection of our own. Events carry
staff ids, report ids and reasons only: never a patient identifier, name or image.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from kiosk import audit

log = logging.getLogger(__name__)


class StationEvents:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            data_dir / "outbox.sqlite", isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(audit.SCHEMA)
        self._lock = threading.Lock()

    def record(
        self, event: str, *, actor: str = "station", report_id: str | None = None, **details: Any
    ) -> None:
        """Append one audit record; a failure is logged, never shown to the nurse as a crash."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    audit.append(self._db, event, report_id=report_id, actor=actor, **details)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error:
            log.exception("could not record station event %s", event)

    def recent(self, limit: int = 50) -> list[audit.AuditRecord]:
        with self._lock:
            last = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
            return audit.records(self._db, after=max(0, last - limit))

    def close(self) -> None:
        with self._lock:
            self._db.close()
