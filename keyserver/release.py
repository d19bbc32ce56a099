"""Group commit for key releases: concurrent releases are decided and audited in one transaction.

Appends to the audit chain are serialized (one chain, one head), so one transaction per release makes the
chain lock — held through each commit's disk flush — the bottleneck. Here the first request to arrive
becomes the leader: it takes every release waiting in this process and, in ONE write transaction, locks the
chain, reads what the decisions need (the callers' tokens, the KEK rows, the reports' registration and
revocation), decides each release (reports.decide_in_batch), appends one record per release or denial and
commits. Each waiting request learns its outcome only after that commit; if the transaction fails, every
request in it fails and no key is returned. No audit record, no key — for a whole batch at once.

Reading after the lock means each decision sees every revocation, token revocation, disabled user or
station and KEK destruction committed before its record is appended. It also means a request thread does no
database round trip of its own: it checks and prepares its request (reports.unwrap), hands it to the batch
and sleeps once, which on a busy 2-core machine saves the thread wake-ups a round trip costs.

The data key itself is computed by the request thread before the batch (an HPKE unwrap with the cached
private key of the header's KEK version): CPU work that reveals nothing, used by the decision only if the
batch read that same KEK ciphertext, and returned only with a committed "released" record.

On PostgreSQL (psycopg) the batch runs straight on libpq, on one dedicated connection with prepared
statements (release_pg.py), in two round trips: BEGIN, the chain lock and the reads in one message, the
multi-row insert with the head move and COMMIT in a second. A caller named in a report only through a group
or a grant costs a third round trip for those rows. A batch with a report not registered yet is redone on
the general path (SQLAlchemy, also SQLite's path), which inserts the report.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, select

from keyserver import audit
from keyserver.db import psycopg_engine, write
from keyserver.keks import PrivateKeyCache
from keyserver.models import api_tokens, keks, reports
from keyserver.release_pg import PgReleaseConnection
from keyserver.users import TOKEN_CALLER_COLUMNS, TOKEN_CALLER_FROM, Principal
from kiosk.sealing.sealed_file import SealedHeader

MAX_BATCH = 128

# A token's caller: the columns of users.TOKEN_QUERY (users.principal_from_row reads them) plus the hash.
TOKEN_COLUMNS = ("token_hash", "kind", "station_id", "id", "username", "role", "email", "disabled", "status")
_TOKENS = (
    select(api_tokens.c.token_hash, *TOKEN_CALLER_COLUMNS)
    .select_from(TOKEN_CALLER_FROM)
    .where(api_tokens.c.token_hash.in_(bindparam("hashes", expanding=True)), api_tokens.c.revoked.is_(False))
)
_KEKS = select(keks.c.version, keks.c.status, keks.c.private_key_enc).where(
    keks.c.version.in_(bindparam("versions", expanding=True))
)
_REPORTS = select(reports.c.report_id, reports.c.header_sha256, reports.c.revoked_at).where(
    reports.c.report_id.in_(bindparam("ids", expanding=True))
)


class GeneralPathNeeded(Exception):
    """A decision needs what only the general path does (a report to register)."""


class PolicyRowsNeeded(Exception):
    """A decision on the fast path needs the caller's groups and the grants for these recipients."""

    def __init__(self, user_id: int | None, recipients: set[str]) -> None:
        super().__init__(user_id, recipients)
        self.user_id, self.recipients = user_id, recipients


def _held_lock() -> Any:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class Pending:
    """One key release request: what its request thread checked and computed, and the batch's outcome."""

    action: str  # key.release | key.delivery
    delivery: bool
    header: SealedHeader
    header_canonical: bytes  # the header's canonical JSON: HPKE's info, and what header_sha hashes
    header_sha: str  # SHA-256 of the canonical header (as registered)
    wrapped: bytes
    details: dict[str, Any]  # the audit details known before the batch (ip, via, kek_version, station_id)
    principal: Principal | None  # the caller if already known (browser session); None: by token_hash
    token_hash: str | None
    keys: PrivateKeyCache
    # (digest of the KEK ciphertext, data key or None if it did not unwrap): HPKE done by the request thread
    # with the cached private key, used only if the batch reads that same ciphertext.
    early: tuple[bytes, bytes | None] | None = None
    # Set by the batch's decision:
    actor: str = "anonymous"
    outcome: str = ""  # released | denied | "" (no record: the request failed, see error)
    audit_details: dict[str, Any] = field(default_factory=dict)
    denied: Exception | None = None  # reports.Denied, already audited
    data_key: bytes | None = None
    seq: int = 0
    error: BaseException | None = None
    # Released once: when the record is committed (or its batch failed), or when this request must lead. A
    # bare lock, held from the start, costs a fraction of a threading.Event (a Condition and a lock per wait).
    wake: Any = field(default_factory=_held_lock)
    done: bool = False


@dataclass
class BatchState:
    """What the batch read after taking the chain lock."""

    tokens: dict[str, dict[str, Any]]  # token hash -> caller row (TOKEN_COLUMNS), valid tokens only
    keks: dict[int, tuple[str, bytes | None]]  # version -> (status, private_key_enc)
    reports: dict[str, tuple[str, bool]]  # report_id -> (header_sha256, revoked)
    conn: Connection | None  # the general path's connection (for further queries); None on the fast path
    # Fast path, read only when a decision asks for them (PolicyRowsNeeded):
    groups: dict[int, list[str]] | None = None  # user id -> group names
    grants: list[tuple[str, str, str]] | None = None  # (subject_type, subject, recipient)


Decide = Callable[[Pending, BatchState], None]


class ReleaseBatcher:
    def __init__(self, engine: Engine, decide: Decide) -> None:
        self._engine = engine
        self._decide = decide
        self._lock = threading.Lock()
        self._queue: list[Pending] = []
        self._leading = False
        self._pg = PgReleaseConnection(engine) if psycopg_engine(engine) else None

    def commit(self, item: Pending) -> Pending:
        """Decide and record this release; returns once its record is committed, raises if it is not.

        The outcome is in ``item`` (``denied`` or ``data_key``). A leader writes batches only until its own
        record is committed, then hands over to the oldest waiting request, so no request serves everyone
        else's records for long under sustained load. Each waiting thread sleeps on its own lock and is
        woken exactly once — when its record is committed or when it is to lead — not on every batch (a
        context switch costs tens of µs of CPU on a busy VM).
        """
        with self._lock:
            self._queue.append(item)
            follower = self._leading
            self._leading = True
        if follower:
            item.wake.acquire()
        while not item.done:
            with self._lock:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                if not (self._pg is not None and self._write_pg(self._pg, batch)):
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
                    pending.wake.release()
            if successor is not None:
                successor.wake.release()
        if item.error is not None:
            raise item.error
        return item

    def _decide_all(
        self, batch: list[Pending], state: BatchState, policy_rows: Callable[..., None] | None = None
    ) -> list[Pending]:
        """Decide every release of the batch; returns those to record, in batch order (a request whose
        decision failed unexpectedly gets no record and no key: it fails). Decisions that need policy rows
        wait until ``policy_rows(state, user_ids, recipients)`` has read them for all of them at once."""
        deferred: list[Pending] = []
        user_ids: set[int] = set()
        recipients: set[str] = set()
        for item in batch:
            try:
                self._decide_one(item, state)
            except PolicyRowsNeeded as need:
                if policy_rows is None:
                    raise GeneralPathNeeded from need
                deferred.append(item)
                if need.user_id is not None:
                    user_ids.add(need.user_id)
                recipients |= need.recipients
        if deferred:
            assert policy_rows is not None
            policy_rows(state, sorted(user_ids), sorted(recipients))
            for item in deferred:
                try:
                    self._decide_one(item, state)
                except PolicyRowsNeeded as need:
                    raise GeneralPathNeeded from need
        return [item for item in batch if item.outcome]

    def _decide_one(self, item: Pending, state: BatchState) -> None:
        item.error, item.outcome = None, ""
        try:
            self._decide(item, state)
        except (GeneralPathNeeded, PolicyRowsNeeded):
            raise
        except Exception as exc:
            item.error, item.outcome = exc, ""

    def _write(self, conn: Connection, batch: list[Pending]) -> None:
        head = audit.lock(conn)  # after the lock: the reads see every change committed before it
        hashes = sorted({item.token_hash for item in batch if item.token_hash is not None})
        tokens = (
            {r.token_hash: dict(r._mapping) for r in conn.execute(_TOKENS, {"hashes": hashes})}
            if hashes
            else {}
        )
        versions = sorted({v for item in batch if (v := item.header.kek_version) is not None})
        ids = sorted({item.header.report_id for item in batch})
        state = BatchState(
            tokens=tokens,
            keks={
                r.version: (r.status, r.private_key_enc) for r in conn.execute(_KEKS, {"versions": versions})
            },
            reports={
                r.report_id: (r.header_sha256, r.revoked_at is not None)
                for r in conn.execute(_REPORTS, {"ids": ids})
            },
            conn=conn,
        )
        recorded = self._decide_all(batch, state)
        for item, seq in zip(recorded, audit.append_many(conn, _entries(recorded), head=head), strict=True):
            item.seq = seq

    def _write_pg(self, pg: PgReleaseConnection, batch: list[Pending]) -> bool:
        """The batch in one transaction on the dedicated libpq connection, in two round trips (three if a
        caller is named only through a group or grant); False (nothing written) if it needs the general
        path."""
        hashes = sorted({item.token_hash for item in batch if item.token_hash is not None})
        versions = sorted({v for item in batch if (v := item.header.kek_version) is not None})
        ids = sorted({item.header.report_id for item in batch})
        failed = True
        try:
            head, kek_rows, report_rows, token_rows = orjson.loads(pg.begin_and_read(versions, ids, hashes))
            state = BatchState(
                tokens={r[0]: dict(zip(TOKEN_COLUMNS, r, strict=True)) for r in token_rows or []},
                keks={
                    r[0]: (r[1], bytes.fromhex(r[2]) if r[2] is not None else None) for r in kek_rows or []
                },
                reports={r[0]: (r[1], r[2]) for r in report_rows or []},
                conn=None,
            )

            def policy_rows(state: BatchState, user_ids: list[int], recipients: list[str]) -> None:
                targets = orjson.dumps([*recipients, "*"])
                memberships, grants = orjson.loads(pg.policy(user_ids, targets))
                state.groups = {user_id: [] for user_id in user_ids}
                for user_id, name in memberships or []:
                    state.groups[user_id].append(name)
                state.grants = [(r[0], r[1], r[2]) for r in grants or []]

            try:
                recorded = self._decide_all(batch, state, policy_rows)
            except GeneralPathNeeded:
                failed = False
                return False  # rolled back below
            rows = audit.chain(_entries(recorded), head[0], head[1])
            if rows:
                records = orjson.dumps(rows)
                pg.append_and_commit(records, rows[-1]["seq"], rows[-1]["hash"])
            else:
                pg.commit()
            failed = False
        finally:
            pg.end(failed)
        for item, row in zip(recorded, rows, strict=True):
            item.seq = row["seq"]
        return True


def _entries(recorded: list[Pending]) -> list[dict[str, Any]]:
    """One audit entry per decided release or denial, in batch order."""
    return [
        {
            "actor": item.actor,
            "action": item.action,
            "report_id": item.header.report_id,
            "outcome": item.outcome,
            "details": item.audit_details,
        }
        for item in recorded
    ]


_batchers: weakref.WeakKeyDictionary[Engine, ReleaseBatcher] = weakref.WeakKeyDictionary()
_batchers_lock = threading.Lock()


def batcher(engine: Engine, decide: Decide) -> ReleaseBatcher:
    found = _batchers.get(engine)
    if found is None:
        with _batchers_lock:
            found = _batchers.get(engine)
            if found is None:
                found = _batchers[engine] = ReleaseBatcher(engine, decide)
    return found
