"""The release batch's connection on PostgreSQL: straight on libpq, with prepared statements.

Psycopg's cursor machinery (pipeline mode or not) cost more CPU per batch than the whole transaction on the
server, so each round trip here is one simple-query message run with libpq's PQexec (psycopg.pq, psycopg's
documented libpq layer, which releases the GIL while it waits), answered by its last statement: the reads
as one JSON document.

Only one batch is written at a time per process (release.ReleaseBatcher has one leader), so the batches
share ONE connection, taken out of the engine's pool for good. Its statements are prepared once when it
connects: parsing and planning the reads took about half of PostgreSQL's CPU per batch. The connection is
closed after an error (the next batch opens a new one; as with the pool, retrying is the client's), after
RECYCLE_SECONDS (the pool's recycle time) and when the engine is disposed.

Values reach the prepared statements as literals in EXECUTE: keys as array literals that are checked to
need no quoting (_pg_array), free text (JSON documents) escaped by libpq (PQescapeLiteral).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any

from sqlalchemy import Engine, event

RECYCLE_SECONDS = 1800.0

_PREPARE = (
    # JSON travels both ways as UTF-8 bytes (orjson), whatever the database's default client encoding.
    "SET client_encoding = 'UTF8'; "
    # The plans do not depend on the values (keys looked up with = ANY on their primary keys or unique
    # indexes), so one generic plan serves every batch.
    "SET plan_cache_mode = force_generic_plan; "
    "PREPARE ks_release_lock AS SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE; "
    # What the decisions need (release.BatchState): the chain head, the KEK rows, the reports'
    # registration and revocation, the callers' tokens (users.TOKEN_CALLER_COLUMNS).
    "PREPARE ks_release_read(int[], text[], text[]) AS SELECT json_build_array("
    "(SELECT json_build_array(seq, hash) FROM audit_head WHERE id = 1), "
    "(SELECT json_agg(json_build_array(version, status, encode(private_key_enc, 'hex'))) FROM keks "
    "WHERE version = ANY($1)), "
    "(SELECT json_agg(json_build_array(report_id, header_sha256, revoked_at IS NOT NULL)) FROM reports "
    "WHERE report_id = ANY($2)), "
    "(SELECT json_agg(json_build_array(t.token_hash, t.kind, t.station_id, u.id, u.username, u.role, "
    "u.email, u.disabled, s.status)) FROM api_tokens t LEFT OUTER JOIN users u ON u.id = t.user_id "
    "LEFT OUTER JOIN stations s ON s.station_id = t.station_id "
    "WHERE t.token_hash = ANY($3) AND t.revoked IS false)); "
    # Only for callers named in a report through a group or a grant: their groups, and the grants for the
    # reports' recipients (a JSON array of names).
    "PREPARE ks_release_policy(int[], json) AS SELECT json_build_array("
    "(SELECT json_agg(json_build_array(ug.user_id, g.name)) FROM user_groups ug "
    "JOIN groups g ON g.id = ug.group_id WHERE ug.user_id = ANY($1)), "
    "(SELECT json_agg(json_build_array(subject_type, subject, recipient)) FROM grants "
    "WHERE recipient IN (SELECT json_array_elements_text($2)))); "
    # Append the batch's records and move the chain head in one statement (as audit.PG_APPEND).
    "PREPARE ks_release_append(json, int, text) AS WITH appended AS (INSERT INTO audit_log (seq, at, "
    "actor, action, report_id, outcome, details, prev_hash, hash) SELECT seq, at, actor, action, "
    "report_id, outcome, details, prev_hash, hash FROM json_to_recordset($1) AS r(seq int, at text, "
    "actor text, action text, report_id text, outcome text, details text, prev_hash text, hash text)) "
    "UPDATE audit_head SET seq = $2, hash = $3 WHERE id = 1"
)
# BEGIN, the chain lock and the reads in one message. The reads are a statement after the lock statement,
# so (READ COMMITTED) their snapshot is taken once the lock is held.
_READ = "BEGIN; EXECUTE ks_release_lock; EXECUTE ks_release_read('{versions}', '{ids}', '{hashes}')"
_POLICY = "EXECUTE ks_release_policy('{user_ids}', {recipients})"
# A failed statement skips the rest of the message: no COMMIT.
_APPEND = "EXECUTE ks_release_append({records}, {seq:d}, '{hash}'); COMMIT"
_ARRAY_ITEM = re.compile(r"[0-9A-Za-z_.-]+")
_HASH = re.compile(r"[0-9a-f]{64}")


def _pg_array(values: list[Any]) -> str:
    """A PostgreSQL array literal of these keys (hex token hashes, report ids, KEK versions), which are
    checked to need no quoting."""
    items = [str(v) for v in values]
    if not all(_ARRAY_ITEM.fullmatch(item) for item in items):
        raise ValueError("unexpected characters in a lookup key")
    return "{" + ",".join(items) + "}"


class PgReleaseConnection:
    """The batch leader's connection; use it from one thread at a time (the leader's)."""

    def __init__(self, engine: Engine) -> None:
        from psycopg import DatabaseError  # psycopg only where it is used
        from psycopg.pq import ConnStatus, Escaping, ExecStatus, TransactionStatus

        self._engine = engine
        self._database_error = DatabaseError
        self._escaping = Escaping
        self._ok = (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK)
        self._conn_ok, self._idle = ConnStatus.OK, TransactionStatus.IDLE
        self._raw: Any = None  # SQLAlchemy's detached connection proxy
        self._pgconn: Any = None
        self._opened = 0.0
        self._close_lock = threading.Lock()
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def begin_and_read(self, versions: list[int], ids: list[str], hashes: list[str]) -> bytes:
        """Open the batch's transaction, take the chain lock and read: a JSON document [head, kek rows,
        report rows, token rows]."""
        self._connect()
        query = _READ.format(versions=_pg_array(versions), ids=_pg_array(ids), hashes=_pg_array(hashes))
        return self._exec(query)  # type: ignore[no-any-return]

    def policy(self, user_ids: list[int], recipients_json: bytes) -> bytes:
        """In the open transaction: a JSON document [memberships, grants] (see ks_release_policy)."""
        query = _POLICY.format(user_ids=_pg_array(user_ids), recipients=self._literal(recipients_json))
        return self._exec(query)  # type: ignore[no-any-return]

    def append_and_commit(self, records_json: bytes, seq: int, head_hash: str) -> None:
        if not _HASH.fullmatch(head_hash):
            raise ValueError("the chain head is not a SHA-256 hex digest")
        self._exec(_APPEND.format(records=self._literal(records_json), seq=seq, hash=head_hash), commit=True)

    def commit(self) -> None:
        self._exec("COMMIT", commit=True)

    def end(self, failed: bool) -> None:
        """After every batch: roll back what did not commit; after a failure, close the connection (its
        state is unknown)."""
        if self._pgconn is None:
            return
        if failed or self._pgconn.status != self._conn_ok:
            self.close()
        elif self._pgconn.transaction_status != self._idle:
            try:
                self._exec("ROLLBACK", command="ROLLBACK")
            except Exception:
                self.close()

    def close(self) -> None:
        with self._close_lock:
            raw, self._raw, self._pgconn = self._raw, None, None
        if raw is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close cleanly
                raw.close()  # detached from the pool: really closed

    def _connect(self) -> None:
        if self._pgconn is not None and time.monotonic() - self._opened > RECYCLE_SECONDS:
            self.close()
        if self._pgconn is not None:
            return
        raw = self._engine.raw_connection()
        driver = raw.driver_connection  # (None once detached)
        raw.detach()
        try:
            self._pgconn = driver.pgconn
            self._raw, self._opened = raw, time.monotonic()
            self._exec(_PREPARE, command="PREPARE")
        except BaseException:
            self.close()
            raise

    def _literal(self, value: bytes) -> str:
        return self._escaping(self._pgconn).escape_literal(value).decode()  # type: ignore[no-any-return]

    def _exec(self, query: str, *, commit: bool = False, command: str = "SELECT") -> Any:
        """Run a message of statements: the single value of the last one (a SELECT), or check that the
        last one is ``command`` (COMMIT when ``commit``)."""
        if self._pgconn is None:
            raise self._database_error("release batch: not connected")
        expected = "COMMIT" if commit else command
        result = self._pgconn.exec_(query.encode("utf-8"))
        status = (result.command_status or b"").decode("utf-8")
        if result.status not in self._ok or not status.startswith(expected):
            message = (result.error_message or b"").decode("utf-8", errors="replace").strip()
            raise self._database_error(f"release batch: {message or status or 'no result'}")
        if expected != "SELECT":
            return None
        return result.get_value(0, 0)  # JSON, UTF-8 (client_encoding, set in _PREPARE)
