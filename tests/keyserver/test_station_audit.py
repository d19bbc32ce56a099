"""Station audit trails shipped to a real key server, on both backends: shipping, idempotent retries,
refusals that store nothing and are audited, who may read them, verification, the worker hook, the CLI,
backup, and the 0001 → 0002 migration of an existing database. Reinstalled stations (several chains) and
the station trails page: test_station_chains.py."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select, text, update

from keyserver import audit, backup, db, station_audit, station_trails
from keyserver.cli import main as keyserver_main
from keyserver.models import station_audit as station_audit_table
from kiosk import audit as station_chain
from kiosk import audit_shipping
from kiosk.app.events import StationEvents
from kiosk.keyserver_client import KeyServerError, StationClient
from kiosk.outbox.worker import OutboxWorker

from .conftest import KeyServer, make_config, master_of, new_database, start_server, stop_server


def record_events(data_dir: Path, count: int, *, actor: str = "nurse-7") -> None:
    """Real station events (kiosk.app.events), with the kinds of details the station writes."""
    events = StationEvents(data_dir)
    try:
        for i in range(count):
            events.record(
                "report-sent" if i % 2 else "signed-in",
                actor=actor,
                report_id=str(uuid.uuid4()) if i % 2 else None,
                method="badge",
                seconds=1.25 + i,
                destinations=["share", "records"],
                reason="défaut réseau",
            )
    finally:
        events.close()


def exported(data_dir: Path, after: int = 0) -> list[dict[str, Any]]:
    conn = sqlite3.connect(data_dir / "outbox.sqlite")
    try:
        return station_chain.exported(conn, after=after, limit=10_000)
    finally:
        conn.close()


def chain_of(data_dir: Path) -> str:
    """The local chain's id: the hash of its seq-1 record."""
    return str(exported(data_dir)[0]["hash"])


def station(ks: KeyServer, tmp_path: Path, station_id: str = "ward-1") -> tuple[StationClient, Path]:
    client = StationClient(ks.url, ks.enroll(station_id), station_id)
    data_dir = tmp_path / f"station-{station_id}"
    data_dir.mkdir()
    return client, data_dir


def stored(ks: KeyServer, station_id: str = "ward-1") -> int:
    with db.read(ks.engine) as conn:
        count = conn.execute(
            select(func.count())
            .select_from(station_audit_table)
            .where(station_audit_table.c.station_id == station_id)
        ).scalar_one()
    return int(count)


def denials(ks: KeyServer, reason: str) -> list[dict[str, Any]]:
    with db.read(ks.engine) as conn:
        records = audit.query(conn, action="station.audit", limit=1000)
    return [r for r in records if r["outcome"] == "denied" and r["details"]["reason"] == reason]


def test_records_ship_verify_and_only_auditors_and_admins_read_them(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 7)

    assert audit_shipping.ship(data_dir, client, batch=3) == 7  # three requests
    assert audit_shipping.backlog(data_dir).unshipped == 0
    assert audit_shipping.ship(data_dir, client) == 0  # nothing new: no request at all

    ks.add_user("audrey", role="auditor")
    ks.add_user("root", role="admin")
    ks.add_user("nurse.lee", role="clinician")
    page = ks.get("/v1/stations/ward-1/audit?after=2&limit=3", who="audrey").json()
    assert page["last_seq"] == 7 and [r["seq"] for r in page["records"]] == [3, 4, 5]
    assert page["chain"] == chain_of(data_dir)  # the station's only (so newest) chain by default
    local = {r["seq"]: r for r in exported(data_dir)}
    for record in page["records"]:
        assert {k: record[k] for k in station_chain.FIELDS} == local[record["seq"]]  # byte for byte
        assert record["received_at"].endswith("+00:00")
    assert json.loads(page["records"][0]["details"])["reason"] == "défaut réseau"
    verified = ks.get("/v1/stations/ward-1/audit/verify", who="root").json()
    assert verified["ok"] and verified["records"] == 7 and verified["problems"] == []
    [one] = verified["chains"]
    assert one["chain"] == chain_of(data_dir) and one["anchored_seq"] == one["head_seq"] == 7
    assert one["head_hash"] == local[7]["hash"]
    assert ks.get("/v1/stations/ward-1/audit", who="nurse.lee").status_code == 403
    assert ks.get("/v1/stations/ward-1/audit").status_code == 401
    assert ks.get("/v1/stations/nowhere/audit", who="audrey").status_code == 404
    # The key server's own chain names each accepted batch, the station's chain and its new head; the
    # chain's first batch is a new chain (here the station's first: it follows no other).
    with db.read(ks.engine) as conn:
        accepted = [r for r in audit.query(conn, action="station.audit") if r["outcome"] != "denied"]
    assert [(r["outcome"], r["details"]["last_seq"]) for r in accepted] == [
        ("new_chain", 3),
        ("ok", 6),
        ("ok", 7),
    ]
    assert accepted[0]["details"]["previous_chain"] is None
    assert {r["details"]["chain"] for r in accepted} == {chain_of(data_dir)}
    assert accepted[-1]["actor"] == "station:ward-1" and accepted[-1]["details"]["head"] == local[7]["hash"]


def test_a_retry_after_a_lost_answer_is_idempotent(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 5)
    records, chain = exported(data_dir), chain_of(data_dir)
    # The server stores 1-3 but the station never hears back: its pointer stays at 0.
    assert client.ship_audit(chain, records[:3])["accepted"] == 3
    again = client.ship_audit(chain, records[:3])
    assert again["accepted"] == 0 and again["last_seq"] == 3 and again["last_hash"] == records[2]["hash"]
    assert client.ship_audit(chain, records[1:4])["accepted"] == 1  # overlapping: 2-3 skipped, 4 new
    assert audit_shipping.ship(data_dir, client) == 1  # resends 1-4 (skipped) and ships 5
    assert audit_shipping.backlog(data_dir).shipped_seq == 5
    assert stored(ks) == 5
    assert client.ship_audit(chain, []) == {
        "chain": chain,
        "accepted": 0,
        "last_seq": 5,
        "last_hash": records[4]["hash"],
    }
    with db.read(ks.engine) as conn:
        assert station_trails.verify(conn, "ward-1")["ok"]


def test_the_station_resumes_where_a_restored_server_ends(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 4)
    assert audit_shipping.ship(data_dir, client) == 4
    # The key server comes back from an older backup: it holds records 1-2 only.
    rows = station_audit_table.c
    with db.write(ks.engine) as conn:
        conn.execute(delete(station_audit_table).where(rows.station_id == "ward-1", rows.seq > 2))
    record_events(data_dir, 2)
    assert audit_shipping.ship(data_dir, client) == 4  # 5-6 meet a gap; the station resends from 3
    assert stored(ks) == 6 and audit_shipping.backlog(data_dir).shipped_seq == 6


def test_bad_batches_store_nothing_and_are_audited(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 6)
    records, chain = exported(data_dir), chain_of(data_dir)

    def refused(batch: Any, status: int, reason: str, *, named: str = chain) -> KeyServerError:
        with pytest.raises(KeyServerError) as caught:
            client.ship_audit(named, batch)
        assert (caught.value.status, caught.value.reason) == (status, reason), caught.value
        return caught.value

    tampered = [dict(r) for r in records[:3]]
    tampered[1]["details"] = tampered[1]["details"].replace("badge", "pin__")
    assert "record 1 (seq 2)" in refused(tampered, 400, "bad_record").message
    refused([{**records[0], "patient": "MRN1"}], 400, "bad_record")  # nothing beyond the fields
    refused([{k: v for k, v in records[0].items() if k != "report_id"}], 400, "bad_record")
    refused([{**records[0], "details": '["not", "an object"]'}], 400, "bad_record")
    refused([records[0], records[2]], 400, "bad_record")  # not consecutive within the batch
    refused([records[0]] * (station_audit.MAX_BATCH + 1), 400, "malformed_request")
    refused(records[:1], 400, "malformed_request", named="not-a-chain-id")
    for body in ({"records": records[:1]}, {"chain": chain, "records": records[:1], "extra": 1}):
        answer = ks.post("/v1/stations/audit", "ward-1", json=body)
        assert answer.status_code == 400 and answer.json()["error"] == "malformed_request"
    assert stored(ks) == 0
    assert len(denials(ks, "bad_record")) == 5 and len(denials(ks, "malformed_request")) == 4

    assert client.ship_audit(chain, records[:2])["accepted"] == 2
    assert "up to seq 2" in refused(records[3:5], 409, "chain_gap").message
    # The same chain, forked after seq 1 (a card put back from an older image of itself, which then
    # recorded other events): its seq 1 is the same, so it names the same chain, and the server refuses it.
    forked_dir = tmp_path / "forked"
    forked_dir.mkdir()
    with sqlite3.connect(forked_dir / "outbox.sqlite") as copy:
        copy.executescript(station_chain.SCHEMA)
        columns = ", ".join(station_chain.FIELDS)
        copy.execute(f"INSERT INTO audit ({columns}) VALUES (?,?,?,?,?,?,?,?)", tuple(records[0].values()))
    record_events(forked_dir, 3, actor="someone-else")
    forked = exported(forked_dir)
    assert chain_of(forked_dir) == chain and forked[1] != records[1]
    refused(forked[:3], 409, "chain_conflict")  # seq 2 differs from the stored seq 2
    refused(forked[1:3], 409, "chain_conflict")
    # A good record followed by a tampered one in one batch: all or nothing.
    bad_tail = [records[2], {**records[3], "event": "nothing-happened"}]
    refused(bad_tail, 400, "bad_record")
    assert stored(ks) == 2
    assert len(denials(ks, "chain_conflict")) == 2 and len(denials(ks, "chain_gap")) == 1
    denial = denials(ks, "chain_gap")[0]
    assert denial["actor"] == "station:ward-1" and denial["details"]["first_seq"] == 4
    assert denial["details"]["chain"] == chain
    # The station side: a conflict is a refusal for a person, and the pointer stays where it was.
    with pytest.raises(KeyServerError) as caught:
        audit_shipping.ship(forked_dir, client)
    assert caught.value.reason == "chain_conflict" and not audit_shipping.transient(caught.value)
    assert audit_shipping.backlog(forked_dir).shipped_seq == 0
    assert stored(ks) == 2


def test_a_disabled_or_unknown_station_is_refused(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 2)
    ks.add_user("root", role="admin")
    assert ks.post("/v1/stations/ward-1/disable", "root").status_code == 200
    with pytest.raises(KeyServerError) as caught:
        audit_shipping.ship(data_dir, client)
    assert (caught.value.status, caught.value.reason) == (403, "station_disabled")
    with pytest.raises(KeyServerError) as caught:
        StationClient(ks.url, "kss_not-a-token", "ward-1").ship_audit(chain_of(data_dir), exported(data_dir))
    assert caught.value.status == 401
    batch = {"chain": chain_of(data_dir), "records": exported(data_dir)}
    user = ks.post("/v1/stations/audit", "root", json=batch)
    assert user.status_code == 403 and user.json()["error"] == "forbidden"
    assert stored(ks) == 0 and audit_shipping.backlog(data_dir).unshipped == 2
    assert denials(ks, "station_disabled") and denials(ks, "unauthenticated")


def test_verify_notices_records_edited_or_removed_on_the_server(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 4)
    audit_shipping.ship(data_dir, client)
    config = tmp_path / "ks.toml"
    config.write_text(
        f'data_dir = "{ks.config.data_dir}"\ndatabase_url = "{ks.config.database_url}"\n'
        f'master_secret_file = "{ks.config.master_secret_file}"\nallow_generated_master_secret = false\n'
    )
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(keyserver_main, ["--config", str(config), "station", "audit", *args])

    listing = cli("ward-1")
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert len(lines) == 5 and lines[0].startswith(f"chain {chain_of(data_dir)}: seq 1-4, 4 records")
    assert "signed-in" in listing.output
    [only] = json.loads(cli("ward-1", "--json", "--after", "2").output)["chains"]
    assert only["chain"] == chain_of(data_dir) and [r["seq"] for r in only["records"]] == [3, 4]
    assert cli("ward-1", "--chain", chain_of(data_dir)[:10]).output == listing.output
    assert cli("ward-1", "--chain", "0123456789").exit_code == 1
    assert "station audit trail intact (1 chain(s))" in cli("ward-1", "--verify").output
    assert cli("nowhere").exit_code == 1

    rows = station_audit_table.c
    with db.write(ks.engine) as conn:
        conn.execute(
            update(station_audit_table).where(rows.station_id == "ward-1", rows.seq == 2).values(event="x")
        )
    broken = cli("ward-1", "--verify", "--json")
    assert broken.exit_code == 1 and "seq 2: content does not match" in broken.output
    with db.write(ks.engine) as conn:
        event = exported(data_dir)[1]["event"]
        conn.execute(
            update(station_audit_table).where(rows.station_id == "ward-1", rows.seq == 2).values(event=event)
        )
        conn.execute(delete(station_audit_table).where(rows.station_id == "ward-1", rows.seq == 4))
    with db.read(ks.engine) as conn:
        result = station_trails.verify(conn, "ward-1")
    assert not result["ok"] and "records removed or rewritten" in result["problems"][0]
    assert result["problems"][0].startswith(f"chain {chain_of(data_dir)[:16]}: ")


def test_the_worker_ships_after_a_round(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 3)
    shipper = audit_shipping.AuditShipper(data_dir, client, min_interval=0)
    worker = OutboxWorker(data_dir, {}, after_round=shipper)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while stored(ks) < 3:
            assert time.monotonic() < deadline, "the worker did not ship"
            time.sleep(0.05)
        record_events(data_dir, 2)  # e.g. a session during which the worker sleeps
        worker.wake()
        while stored(ks) < 5:
            assert time.monotonic() < deadline, "the worker did not ship after a wake"
            time.sleep(0.05)
    finally:
        worker.stop()
    assert audit_shipping.backlog(data_dir) == audit_shipping.Backlog(0, None, 5)


def test_backup_and_restore_keep_station_trails(
    ks: KeyServer, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 3)
    audit_shipping.ship(data_dir, client)
    with db.write(ks.engine) as conn:
        blob = backup.create(conn, ks.master, "a long backup passphrase", actor="test")
    target = tmp_path / "restored"
    target.mkdir()
    config = make_config(target, new_database(backend, request, target))
    engine = db.make_engine(config.effective_database_url)
    try:
        with db.write(engine) as conn:
            backup.restore(conn, master_of(config), blob, "a long backup passphrase", actor="test")
        with db.read(engine) as conn:
            result = station_trails.verify(conn, "ward-1")
    finally:
        engine.dispose()
    assert result["ok"] and result["records"] == 3 and result["chains"][0]["anchored_seq"] == 3


def _empty_database(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory / 'old.sqlite3'}"
    cluster = request.getfixturevalue("pg_cluster")
    name = f"ks_old_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(cluster.url())
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return str(cluster.url(name))


def test_upgrade_from_0001_keeps_the_data_and_adds_station_trails(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from alembic import command

    url = _empty_database(backend, request, tmp_path)
    engine = db.make_engine(url)
    command.upgrade(db.alembic_config(url), "0001")
    assert db.current_revision(engine) == "0001" and not db.is_current(engine)
    with db.write(engine) as conn:
        audit.append(conn, actor="test", action="kek.rotate", outcome="ok", details={"version": 1})
    if backend == "postgresql":
        with pytest.raises(RuntimeError, match="not current"):  # migrated only by `keyserver db upgrade`
            start_server(make_config(tmp_path, url))
        db.upgrade(engine)
    else:  # SQLite migrates itself when the server starts
        ks, server = start_server(make_config(tmp_path, url))
        stop_server(server)
        ks.engine.dispose()
    assert db.current_revision(engine) == db.HEAD_REVISION == "0002"
    with db.read(engine) as conn:
        assert audit.verify(conn).ok and audit.verify(conn).records == 1
        assert conn.execute(select(func.count()).select_from(station_audit_table)).scalar_one() == 0
    engine.dispose()


def test_openapi_describes_the_endpoints(ks: KeyServer, tmp_path: Path) -> None:
    import jsonschema

    document = ks.get("/v1/openapi.json").json()
    paths, schemas = document["paths"], document["components"]["schemas"]
    assert schemas["StationAudit"]["required"] == ["chain", "records"]
    # What a station really sends, and what the server really answers, fit the documented schemas.
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 2)
    batch = {"chain": chain_of(data_dir), "records": exported(data_dir)}
    answer = client.ship_audit(batch["chain"], batch["records"])
    ks.add_user("audrey", role="auditor")
    for instance, schema in (
        (batch, "StationAudit"),
        (answer, "StationAuditHead"),
        (ks.get("/v1/stations/ward-1/audit", who="audrey").json(), "StationAuditPage"),
        (ks.get("/v1/stations/ward-1/audit/chains", who="audrey").json(), "StationAuditChains"),
        (ks.get("/v1/stations/ward-1/audit/verify", who="audrey").json(), "StationAuditVerify"),
    ):
        root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
        jsonschema.Draft202012Validator(root).validate(instance)
    assert "post" in paths["/v1/stations/audit"]
    query = {p["name"] for p in paths["/v1/stations/{station_id}/audit"]["get"]["parameters"]}
    assert query == {"station_id", "chain", "after", "limit"}
    chains = paths["/v1/stations/{station_id}/audit/chains"]["get"]["responses"]["200"]
    assert chains["content"]["application/json"]["schema"]["$ref"].endswith("/StationAuditChains")
    verify = paths["/v1/stations/{station_id}/audit/verify"]["get"]["responses"]["200"]
    assert verify["content"]["application/json"]["schema"]["$ref"].endswith("/StationAuditVerify")
    throttled = paths["/v1/stations/enroll"]["post"]["responses"]["429"]
    assert "Retry-After" in throttled["headers"]
