"""The key release batch (keyserver/release.py) on both backends, with several requests in ONE batch:

every decision is made in the batch's transaction after the audit chain lock (tokens, KEK state, policy,
registration, revocation), every outcome is recorded there, only releases carry a key; on PostgreSQL the
batch stays on the psycopg fast path (also for callers named through a group or grant) unless a report must
be registered; the early HPKE unwrap is used only when the batch read the same KEK ciphertext. Also the
gunicorn worker pinning hooks (keyserver/gunicorn_conf.py).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text, update

from keyserver import audit, db, gunicorn_conf, keks, release, release_pg, reports, users
from keyserver.keks import PrivateKeyCache
from keyserver.models import api_tokens, audit_head
from keyserver.models import keks as keks_table
from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import EnvelopeSealer, write_sealed

from .conftest import KeyServer, package_of


def _item(ks: KeyServer, cache: PrivateKeyCache, package: dict[str, Any], who: str) -> release.Pending:
    """What reports.unwrap hands to the batch for this token's request."""
    details = {"ip": "127.0.0.1", "via": "token"}
    return reports.prepare_release(
        cache,
        None,
        package,
        action="key.release",
        delivery=False,
        details=details,
        token=ks.tokens.get(who, "ksu_not_a_token"),
    )


def _one_batch(ks: KeyServer, items: list[release.Pending]) -> None:
    """Run these requests as ONE batch through the real batcher (the first three wait in its queue, the
    last one leads and takes them all)."""
    batcher = release.ReleaseBatcher(ks.engine, reports.decide_in_batch)
    batcher._queue = items[:-1]
    batcher._leading = False
    batcher.commit(items[-1])
    assert all(item.done for item in items)


@contextlib.contextmanager
def _general_path_forbidden(ks: KeyServer) -> Iterator[None]:
    """On PostgreSQL: fail if the batch leaves the psycopg fast path."""
    if ks.engine.dialect.name != "postgresql":
        yield
        return

    def refuse(engine: Any) -> Any:
        raise AssertionError("the batch took the general path")

    original = release.write
    release.write = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        release.write = original


def _register(ks: KeyServer, package: dict[str, Any]) -> None:
    header = reports.parse_header(package["header"])
    with db.write(ks.engine) as conn:
        reports._insert_report(conn, header)


def test_one_batch_decides_and_records_every_outcome(ks: KeyServer) -> None:
    ks.add_user("nurse.lee", email="nurse.lee@clinic.example")
    ks.add_user("nurse.kim", groups=["wound-care"])
    ks.add_user("nurse.eva", groups=["Wundversorgung-Süd"])  # non-ASCII through both JSON directions
    ks.add_user("dr.ada", groups=["dermatology"])
    ks.add_user("dr.bob")
    ks.add_user("root", role="admin")
    ks.add_user("gone")
    with db.write(ks.engine) as conn:
        users.add_grant(conn, subject_type="group", subject="dermatology", recipient="wound-care", actor="t")
        users.add_grant(conn, subject_type="role", subject="admin", recipient="*", actor="test")
    _, direct = ks.seal("direct", station_id="ward-3", recipients=["nurse.lee@clinic.example"])
    _, group = ks.seal("group", station_id="ward-3", recipients=["wound-care"])
    _, umlaut = ks.seal("umlaut", station_id="ward-3", recipients=["wundversorgung-süd", 'it\'s "quoted"'])
    _, revoked = ks.seal("revoked", station_id="ward-3", recipients=["nurse.lee"])
    tampered = {**direct, "header": {**direct["header"], "recipients": ["dr.bob"]}}
    for package in (direct, group, umlaut, revoked):
        _register(ks, package)
    with db.write(ks.engine) as conn:
        rid = revoked["header"]["report_id"]
        reports.set_revoked(conn, rid, True, actor="test", reason="wrong patient")
    cache = PrivateKeyCache(ks.master)
    batch = [
        _item(ks, cache, direct, "nurse.lee"),  # named by email: released
        _item(ks, cache, group, "nurse.kim"),  # through her group: released
        _item(ks, cache, umlaut, "nurse.eva"),  # through her group, a non-ASCII name: released
        _item(ks, cache, group, "dr.ada"),  # through a grant to her group: released
        _item(ks, cache, group, "root"),  # through a grant to her role: released
        _item(ks, cache, group, "dr.bob"),  # not a recipient
        _item(ks, cache, direct, "nobody"),  # unknown token
        _item(ks, cache, revoked, "nurse.lee"),  # revoked report
        _item(ks, cache, tampered, "dr.bob"),  # altered header
        _item(ks, cache, direct, "gone"),  # token revoked after the request was checked
    ]
    with db.write(ks.engine) as conn:  # between the request thread's checks and the batch
        gone = users.hash_token(ks.tokens["gone"])
        conn.execute(update(api_tokens).where(api_tokens.c.token_hash == gone).values(revoked=True))
    with db.read(ks.engine) as conn:
        head_before = conn.execute(select(audit_head.c.seq)).scalar()
    with _general_path_forbidden(ks):
        _one_batch(ks, batch)

    outcomes = [(item.outcome, item.denied.reason if item.denied else None) for item in batch]  # type: ignore[attr-defined]
    assert outcomes == [
        ("released", None),
        ("released", None),
        ("released", None),
        ("released", None),
        ("released", None),
        ("denied", "not_recipient"),
        ("denied", "unauthenticated"),
        ("denied", "revoked"),
        ("denied", "tampered"),
        ("denied", "unauthenticated"),
    ]
    assert all(item.error is None for item in batch)
    assert all((item.data_key is not None) == (item.outcome == "released") for item in batch)
    # One record per request, in batch order, right after the head; the chain verifies.
    seqs = [item.seq for item in batch]
    assert seqs == list(range(head_before + 1, head_before + 1 + len(batch)))
    with db.read(ks.engine) as conn:
        records = {r["seq"]: r for r in audit.query(conn, after_seq=head_before)}
        assert audit.verify(conn).ok
    assert [records[s]["outcome"] for s in seqs] == [o for o, _ in outcomes]
    assert [records[s]["details"].get("reason") for s in seqs] == [r for _, r in outcomes]
    assert records[seqs[6]]["actor"] == "anonymous" and records[seqs[6]]["details"]["bad_token"] is True
    assert records[seqs[1]]["actor"] == "user:nurse.kim"
    assert records[seqs[0]]["report_id"] == direct["header"]["report_id"]


def test_a_report_to_register_takes_the_general_path_with_the_same_decisions(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    ks.add_user("dr.bob")
    _, new = ks.seal("new", station_id="ward-3", recipients=["nurse.lee"])
    _, known = ks.seal("known", station_id="ward-3", recipients=["nurse.lee"])
    _register(ks, known)
    cache = PrivateKeyCache(ks.master)
    batch = [
        _item(ks, cache, known, "nurse.lee"),
        _item(ks, cache, new, "dr.bob"),  # denied: does not register the report
        _item(ks, cache, new, "nurse.lee"),  # registers it
        _item(ks, cache, new, "nurse.lee"),  # the same report again in the same batch
    ]
    _one_batch(ks, batch)
    assert [item.outcome for item in batch] == ["released", "denied", "released", "released"]
    assert [item.audit_details.get("first_seen") for item in batch] == [None, None, True, None]
    with db.read(ks.engine) as conn:
        info = reports.report_info(conn, new["header"]["report_id"])
        assert info is not None and info["recipients"] == ["nurse.lee"]
        assert audit.verify(conn).ok


def _sealed_with_id(ks: KeyServer, name: str, report_id: str, recipients: list[str]) -> dict[str, Any]:
    path = ks.directory / f"{name}.cpseal"
    with open(path, "wb") as out:
        write_sealed(
            out,
            lambda sink: sink.write(b"bundle"),
            EnvelopeSealer(ks.public_kek()),
            report_id=report_id,
            station_id="ward-3",
            created_at="2026-01-02T03:04:05Z",
            recipients=recipients,
        )
    return package_of(path)


def test_a_second_header_for_a_report_registered_in_the_same_batch_conflicts(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    # Two authentic headers under one report id (a station reusing an id): the first registers the report,
    # the second, decided after it in the same transaction, is refused.
    report_id = str(uuid.uuid4())
    first = _sealed_with_id(ks, "first", report_id, ["nurse.lee"])
    second = _sealed_with_id(ks, "second", report_id, ["nurse.lee", "dr.who"])
    cache = PrivateKeyCache(ks.master)
    batch = [_item(ks, cache, first, "nurse.lee"), _item(ks, cache, second, "nurse.lee")]
    _one_batch(ks, batch)
    assert batch[0].outcome == "released" and batch[0].audit_details.get("first_seen") is True
    assert batch[1].outcome == "denied" and batch[1].denied.reason == "header_conflict"  # type: ignore[union-attr]
    assert batch[1].data_key is None


def test_the_early_unwrap_is_used_only_for_the_ciphertext_the_batch_read(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    _register(ks, package)
    cache = PrivateKeyCache(ks.master)
    with db.read(ks.engine) as conn:
        enc = conn.execute(select(keks_table.c.private_key_enc).where(keks_table.c.version == 1)).scalar()
    right = cache.entry(1, enc)
    # A stale cache entry (another key, another ciphertext digest): the early unwrap fails with it ...
    cache._cache[1] = (b"stale digest", envelope.generate_kek())
    stale = _item(ks, cache, package, "nurse.lee")
    assert stale.early is not None and stale.early[1] is None
    # ... and the batch, which read the real row, unwraps again with the right key instead of refusing.
    _one_batch(ks, [stale])
    assert stale.outcome == "released" and stale.data_key is not None
    assert cache.peek(1) is not None and cache.peek(1)[0] == right[0]  # type: ignore[index]
    # With the right entry cached, the early result is the one released.
    item = _item(ks, cache, package, "nurse.lee")
    assert item.early is not None and item.early[0] == right[0]
    _one_batch(ks, [item])
    assert item.outcome == "released" and item.data_key == item.early[1] == stale.data_key


def test_a_destroyed_kek_is_refused_even_with_its_key_cached(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    _, old = ks.seal("old", station_id="ward-3", recipients=["nurse.lee"])
    _register(ks, old)
    cache = PrivateKeyCache(ks.master)
    cached = _item(ks, cache, old, "nurse.lee")
    _one_batch(ks, [cached])
    assert cached.outcome == "released" and cache.peek(1) is not None
    ks.rotate()
    with db.write(ks.engine) as conn:
        keks.destroy(conn, 1, actor="test", retention_days=0)
    item = _item(ks, cache, old, "nurse.lee")
    assert item.early is not None and item.early[1] is not None  # the cached key still unwraps ...
    _one_batch(ks, [item])
    assert item.outcome == "denied" and item.denied.reason == "kek_destroyed"  # type: ignore[union-attr]
    assert item.data_key is None  # ... but the batch read the row and refused


def test_array_literals_take_only_plain_keys() -> None:
    assert release_pg._pg_array(["ab-12", 3]) == "{ab-12,3}"
    assert release_pg._pg_array([]) == "{}"
    for bad in ("a,b", "a}", '"', "a b", "a'b", "\\"):
        with pytest.raises(ValueError):
            release_pg._pg_array([bad])


def _backends_of(ks: KeyServer, query: str) -> set[int]:
    """PIDs of this database's server processes whose current or last statement matches."""
    with db.read(ks.engine) as conn:
        rows = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query LIKE :q"
            ),
            {"q": query},
        )
        return {r.pid for r in rows}


def _pg_batcher(ks: KeyServer) -> tuple[dict[str, Any], PrivateKeyCache, release.ReleaseBatcher]:
    """A registered report for nurse.lee and a batcher of its own (PostgreSQL only)."""
    if ks.engine.dialect.name != "postgresql":
        pytest.skip("the dedicated connection is PostgreSQL's fast path")
    ks.add_user("nurse.lee")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    _register(ks, package)
    return package, PrivateKeyCache(ks.master), release.ReleaseBatcher(ks.engine, reports.decide_in_batch)


def test_postgresql_batches_share_one_prepared_connection_that_recovers(ks: KeyServer) -> None:
    package, cache, batcher = _pg_batcher(ks)

    def one(batcher: release.ReleaseBatcher) -> release.Pending:
        item = _item(ks, cache, package, "nurse.lee")
        try:
            batcher.commit(item)
        except Exception as exc:  # the batch failed: the item carries the error
            assert item.error is exc
        return item

    with _general_path_forbidden(ks):
        first, second = one(batcher), one(batcher)
    assert first.outcome == second.outcome == "released"
    batch_backends = _backends_of(ks, "%ks_release_%")
    assert len(batch_backends) == 1  # both batches on one connection, which runs the prepared statements
    with db.read(ks.engine) as conn:
        prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
    assert prepared == 0  # ... prepared on that connection only, not on pooled ones

    # The connection dies (a PostgreSQL restart, a network cut): that batch fails and returns no key, and
    # nothing of it is recorded; the next batch connects again and prepares its statements again.
    with db.read(ks.engine) as conn:
        head_before = conn.execute(select(audit_head.c.seq)).scalar()
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": next(iter(batch_backends))})
    lost = one(batcher)
    assert lost.error is not None and lost.data_key is None and lost.outcome == ""
    with db.read(ks.engine) as conn:
        assert conn.execute(select(audit_head.c.seq)).scalar() == head_before
    again = one(batcher)
    assert again.error is None and again.outcome == "released" and again.seq == head_before + 1
    assert len(_backends_of(ks, "%ks_release_%")) == 1

    # Disposing of the engine closes it (nothing left connected to the database).
    ks.engine.dispose()
    deadline = time.monotonic() + 5  # the server process ends a moment after the client closes
    while _backends_of(ks, "%ks_release_%") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _backends_of(ks, "%ks_release_%") == set()


def test_a_failed_statement_rolls_the_whole_batch_back_and_the_connection_is_replaced(
    ks: KeyServer,
) -> None:
    package, cache, batcher = _pg_batcher(ks)
    assert batcher._pg is not None
    with db.read(ks.engine) as conn:
        head_before = conn.execute(select(audit_head.c.seq)).scalar()
    original = release_pg._APPEND
    # The insert of the batch's records fails (as a full disk or a constraint would): no COMMIT runs.
    release_pg._APPEND = "EXECUTE ks_release_append({records}, {seq:d}, '{hash}'); SELECT 1/0; COMMIT"
    try:
        item = _item(ks, cache, package, "nurse.lee")
        with pytest.raises(Exception, match="division by zero"):
            batcher.commit(item)
    finally:
        release_pg._APPEND = original
    assert item.data_key is not None  # decided, but the request raises: no key leaves without its record
    with db.read(ks.engine) as conn:
        assert conn.execute(select(audit_head.c.seq)).scalar() == head_before
        assert audit.verify(conn).ok
    assert batcher._pg._pgconn is None  # closed after the failure
    again = _item(ks, cache, package, "nurse.lee")
    batcher.commit(again)
    assert again.outcome == "released" and again.seq == head_before + 1


def test_the_batch_connection_speaks_utf8_whatever_the_database_default(ks: KeyServer) -> None:
    """The batch's JSON travels as UTF-8 bytes: a database whose default client encoding is another one
    still gets a non-ASCII group name right, both ways (release_pg sets client_encoding on its
    connection)."""
    if ks.engine.dialect.name != "postgresql":
        pytest.skip("the dedicated connection is PostgreSQL's fast path")
    with db.write(ks.engine) as conn:
        name = conn.execute(text("SELECT current_database()")).scalar()
        conn.execute(text(f"ALTER DATABASE {name} SET client_encoding = 'LATIN1'"))
    ks.engine.dispose()  # new connections take the database's default
    with db.read(ks.engine) as conn:
        assert conn.execute(text("SHOW client_encoding")).scalar() == "LATIN1"
    ks.add_user("nurse.eva", groups=["Wundversorgung-Süd"])
    _, package = ks.seal("umlaut", station_id="ward-3", recipients=["wundversorgung-süd"])
    _register(ks, package)
    cache = PrivateKeyCache(ks.master)
    item = _item(ks, cache, package, "nurse.eva")
    with _general_path_forbidden(ks):
        _one_batch(ks, [item])
    assert item.outcome == "released" and item.data_key is not None
    with db.read(ks.engine) as conn:
        assert audit.verify(conn).ok


class _Worker:
    def __init__(self) -> None:
        self.pid = 0


class _Server:
    def __init__(self) -> None:
        self.WORKERS: dict[int, _Worker] = {}
        self.log = type("Log", (), {"info": staticmethod(lambda *a: None)})()


def test_workers_are_spread_over_the_cpus_and_replaced_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYSERVER_PIN_WORKERS", raising=False)
    monkeypatch.setattr(gunicorn_conf.os, "sched_getaffinity", lambda pid: {2, 3, 5})
    pinned: list[set[int]] = []
    monkeypatch.setattr(gunicorn_conf.os, "sched_setaffinity", lambda pid, cpus: pinned.append(cpus))
    server = _Server()
    cpus = []
    for pid in range(1, 6):
        worker = _Worker()
        gunicorn_conf.pre_fork(server, worker)
        server.WORKERS[pid] = worker
        gunicorn_conf.post_fork(server, worker)
        cpus.append(worker.keyserver_cpu)  # type: ignore[attr-defined]
    assert cpus == [2, 3, 5, 2, 3] and pinned == [{c} for c in cpus]
    del server.WORKERS[3]  # the worker on CPU 5 died: its replacement takes CPU 5
    worker = _Worker()
    gunicorn_conf.pre_fork(server, worker)
    assert worker.keyserver_cpu == 5  # type: ignore[attr-defined]


def test_pinning_can_be_turned_off_and_is_skipped_on_one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gunicorn_conf.os, "sched_setaffinity", lambda pid, cpus: pytest.fail("pinned"))
    monkeypatch.setenv("KEYSERVER_PIN_WORKERS", "0")
    worker = _Worker()
    gunicorn_conf.pre_fork(_Server(), worker)
    gunicorn_conf.post_fork(_Server(), worker)
    monkeypatch.delenv("KEYSERVER_PIN_WORKERS")
    monkeypatch.setattr(gunicorn_conf.os, "sched_getaffinity", lambda pid: {0})
    gunicorn_conf.pre_fork(_Server(), worker)
    gunicorn_conf.post_fork(_Server(), worker)
    assert not hasattr(worker, "keyserver_cpu")
