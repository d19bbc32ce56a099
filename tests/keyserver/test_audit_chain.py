"""The audit hash chain on both backends: intact chains verify; edits, insertions and deletions do not;
concurrent appends never fork the chain."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, func, insert, select, update

from keyserver import audit, db
from keyserver.models import audit_log


@pytest.fixture
def engine(db_url: str):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db_url)
    with db.write(engine) as conn:
        for i in range(5):
            audit.append(
                conn,
                actor=f"user:u{i}",
                action="key.release",
                outcome="released",
                report_id=None,
                details={"n": i},
            )
    yield engine
    engine.dispose()


def _verify(engine) -> audit.VerifyResult:  # type: ignore[no-untyped-def]
    with db.read(engine) as conn:
        return audit.verify(conn)


def test_intact_chain_verifies(engine) -> None:  # type: ignore[no-untyped-def]
    result = _verify(engine)
    assert result.ok, result.problems
    assert result.records == 5
    with db.read(engine) as conn:
        rows = audit.query(conn)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == audit.GENESIS
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 5))
    assert result.head_hash == rows[-1]["hash"]


def test_edited_record_is_detected(engine) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(outcome="denied"))
    result = _verify(engine)
    assert not result.ok
    assert any("seq 3" in p and "edited" in p for p in result.problems)


def test_edited_details_are_detected(engine) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(details='{"n":99}'))
    assert not _verify(engine).ok


def test_inserted_record_is_detected(engine) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.seq == 5)).mappings().one()
        forged = {**row, "seq": 6, "actor": "user:mallory", "prev_hash": row["hash"]}
        forged["hash"] = audit.record_hash(forged)  # even a correctly hashed row: the head disagrees
        conn.execute(insert(audit_log).values(**forged))
    result = _verify(engine)
    assert not result.ok
    assert any("head" in p for p in result.problems)


def test_inserted_record_in_the_middle_is_detected(engine) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq >= 3).values(seq=audit_log.c.seq + 100))
        row = conn.execute(select(audit_log).where(audit_log.c.seq == 2)).mappings().one()
        forged = {**row, "seq": 3, "actor": "user:mallory", "prev_hash": row["hash"]}
        forged["hash"] = audit.record_hash(forged)
        conn.execute(insert(audit_log).values(**forged))
    result = _verify(engine)
    assert not result.ok
    assert any("deleted or inserted" in p or "prev_hash" in p for p in result.problems)


def test_deleted_record_is_detected(engine) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 2))
    result = _verify(engine)
    assert not result.ok
    assert any("seq 3" in p for p in result.problems)


def test_deleted_last_record_is_detected(engine) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 5))
    result = _verify(engine)
    assert not result.ok
    assert any("removed" in p for p in result.problems)


def test_concurrent_appends_keep_one_chain(engine) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                with db.write(engine) as conn:
                    audit.append(
                        conn, actor=f"user:t{n}", action="key.release", outcome="released", details={"i": i}
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = _verify(engine)
    assert result.ok, result.problems
    with db.read(engine) as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar() == 5 + 6 * 15


def test_failed_transaction_leaves_no_record(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), db.write(engine) as conn:
        audit.append(conn, actor="user:x", action="key.release", outcome="released")
        raise RuntimeError("the guarded action failed")
    assert _verify(engine).records == 5


def test_export_formats_carry_every_field(engine) -> None:  # type: ignore[no-untyped-def]
    with db.read(engine) as conn:
        records = list(audit.iter_all(conn, batch=2))
    assert len(records) == 5
    csv_text = audit.to_csv(records)
    assert csv_text.splitlines()[0] == ",".join(audit.FIELDS)
    assert records[4]["hash"] in csv_text
    # An external verifier can recompute each hash from the export.
    for record in records:
        recomputed = audit.record_hash(
            {**record, "details": audit.canonical_json(record["details"]).decode()}
        )
        assert recomputed == record["hash"]
