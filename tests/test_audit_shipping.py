"""The station ships its audit trail: `kiosk outbox ship-audit`, an unreachable key server (retried later,
nothing lost), the worker hook's back-off, and the doctor's backlog check. A real key server on SQLite; the
same exchanges on both backends are in tests/keyserver/test_station_audit.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiosk import audit, audit_shipping, doctor, doctor_host, station
from kiosk import config as kiosk_config
from kiosk.app.events import StationEvents
from kiosk.cli import main
from kiosk.keyserver_client import KeyServerError, StationClient
from tests.keyserver.conftest import KeyServer, make_config, start_server, stop_server
from tests.keyserver.pg import free_port


@pytest.fixture
def key_server(tmp_path: Path) -> Iterator[KeyServer]:
    directory = tmp_path / "keyserver"
    directory.mkdir()
    ks, server = start_server(make_config(directory, f"sqlite:///{directory / 'ks.sqlite3'}"))
    ks.rotate()
    yield ks
    stop_server(server)
    ks.engine.dispose()


def station_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kiosk.toml"
    path.write_text(
        f'[station]\nid = "ward-3"\ndata_dir = "{tmp_path / "data"}"\n\n[keyserver]\nurl = "{url}"\n\n'
        f'[[destination]]\nname = "usb"\ntype = "folder"\npath = "{tmp_path / "usb"}"\n'
    )
    return path


def record(data_dir: Path, count: int) -> None:
    events = StationEvents(data_dir)
    try:
        for i in range(count):
            events.record("signed-in", actor=f"nurse-{i}", method="pin")
    finally:
        events.close()


def test_ship_audit_command(key_server: KeyServer, tmp_path: Path) -> None:
    config_path = station_config(tmp_path, key_server.url)
    runner = CliRunner()
    not_enrolled = runner.invoke(main, ["--config", str(config_path), "outbox", "ship-audit"])
    assert not_enrolled.exit_code == 1 and "not enrolled" in not_enrolled.output
    config = kiosk_config.load(config_path)
    station.enroll(config, key_server.url, key_server.enrollment_code())
    record(config.station.data_dir, 3)

    shipped = runner.invoke(main, ["--config", str(config_path), "outbox", "ship-audit"])
    assert shipped.exit_code == 0, shipped.output
    assert "3 audit records shipped" in shipped.output and "up to seq 3" in shipped.output
    key_server.add_user("audrey", role="auditor")
    verified = key_server.get("/v1/stations/ward-3/audit/verify", who="audrey").json()
    assert verified["ok"] and verified["records"] == 3

    key_server.add_user("root", role="admin")
    assert key_server.post("/v1/stations/ward-3/disable", "root").status_code == 200
    record(config.station.data_dir, 1)
    refused = runner.invoke(main, ["--config", str(config_path), "outbox", "ship-audit"])
    assert refused.exit_code == 1 and "station_disabled" in refused.output


def test_ship_audit_with_a_broken_local_chain_is_one_clear_line(
    key_server: KeyServer, tmp_path: Path
) -> None:
    config_path = station_config(tmp_path, key_server.url)
    config = kiosk_config.load(config_path)
    station.enroll(config, key_server.url, key_server.enrollment_code())
    record(config.station.data_dir, 2)
    with sqlite3.connect(config.station.data_dir / "outbox.sqlite") as db:
        db.execute("DELETE FROM audit WHERE seq = 1")
    result = CliRunner().invoke(main, ["--config", str(config_path), "outbox", "ship-audit"])
    assert result.exit_code == 1
    assert "audit chain cannot be shipped" in result.output and "Traceback" not in result.output


def test_an_unreachable_key_server_postpones_shipping(
    key_server: KeyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    record(data_dir, 2)
    token = key_server.enroll("ward-3")
    offline = StationClient(f"http://127.0.0.1:{free_port()}", token, "ward-3")
    with pytest.raises(KeyServerError) as caught:
        audit_shipping.ship(data_dir, offline)
    assert caught.value.status == 0 and audit_shipping.transient(caught.value)
    assert audit_shipping.backlog(data_dir).unshipped == 2  # nothing confirmed, nothing lost

    # The worker's hook: never raises, and waits before trying again.
    monkeypatch.setattr(audit_shipping, "RETRY_MIN_SECONDS", 0.5)
    shipper = audit_shipping.AuditShipper(data_dir, offline, min_interval=0)
    shipper()
    offline.url = key_server.url  # the network is back
    shipper()  # still backing off
    assert audit_shipping.backlog(data_dir).unshipped == 2
    time.sleep(0.6)
    shipper()
    assert audit_shipping.backlog(data_dir) == audit_shipping.Backlog(0, None, 2)


def test_doctor_reports_the_backlog(key_server: KeyServer, tmp_path: Path) -> None:
    config = kiosk_config.load(station_config(tmp_path, key_server.url))
    config.station.data_dir.mkdir()
    record(config.station.data_dir, 1)
    assert doctor.check_audit_shipping(config).status == "skip"  # not enrolled: nowhere to ship to
    station.enroll(config, key_server.url, key_server.enrollment_code())

    fresh = doctor.check_audit_shipping(config)
    assert fresh.status == "pass" and "1 audit record not shipped" in fresh.detail
    later = time.time() + 2 * 3600
    assert doctor.check_audit_shipping(config, now=later).status == "warn"
    much_later = time.time() + 3 * 24 * 3600
    small = doctor.check_audit_shipping(config, now=much_later)
    assert small.status == "warn" and "ship-audit" in small.fix  # old, but only one record
    record(config.station.data_dir, doctor_host.AUDIT_BACKLOG_FAIL_RECORDS)
    large = doctor.check_audit_shipping(config, now=much_later)
    assert large.status == "fail" and "101 audit records" in large.detail
    assert large.fix.startswith("`kiosk outbox ship-audit`")

    client = station.keyserver_client(config)
    assert client is not None and audit_shipping.ship(config.station.data_dir, client) == 101
    shipped = doctor.check_audit_shipping(config, now=much_later)
    assert shipped.status == "pass" and "up to seq 101" in shipped.detail
    names = [r.name for r in doctor.run_checks(config, hardware=False, timeout=2)]
    assert "audit shipping" in names


def test_the_running_station_ships_its_events(key_server: KeyServer, tmp_path: Path) -> None:
    from kiosk.app.runtime import StationRuntime

    config = kiosk_config.load(station_config(tmp_path, key_server.url))
    station.enroll(config, key_server.url, key_server.enrollment_code())
    runtime = StationRuntime(config, start_worker=False)
    try:
        runtime.events.record("signed-in", actor="nurse-1", method="badge")
        runtime.start_worker()  # as at boot and after enrollment: the worker gets the station's shipper
        deadline = time.monotonic() + 20
        while audit_shipping.backlog(config.station.data_dir).shipped_seq < 1:
            assert time.monotonic() < deadline, "the station did not ship its events"
            time.sleep(0.05)
    finally:
        if runtime.worker is not None:
            runtime.worker.stop()
        runtime.outbox.close()
        runtime.events.close()
    key_server.add_user("audrey", role="auditor")
    records = key_server.get("/v1/stations/ward-3/audit", who="audrey").json()["records"]
    assert [r["event"] for r in records] == ["signed-in"] and records[0]["actor"] == "nurse-1"


def test_a_reinstalled_station_ships_a_new_chain(key_server: KeyServer, tmp_path: Path) -> None:
    """A fresh card, the same station id, enrolled again: its trail is a new chain next to the old one."""
    runner = CliRunner()
    old_card, new_card = tmp_path / "old", tmp_path / "new"
    old_card.mkdir()
    new_card.mkdir()
    old_config = station_config(old_card, key_server.url)
    station.enroll(kiosk_config.load(old_config), key_server.url, key_server.enrollment_code())
    record(old_card / "data", 3)
    assert (
        "3 audit records shipped"
        in runner.invoke(main, ["--config", str(old_config), "outbox", "ship-audit"]).output
    )

    new_config = station_config(new_card, key_server.url)
    code = key_server.enrollment_code("ward-3")  # a re-enrollment code bound to the station id
    station.enroll(kiosk_config.load(new_config), key_server.url, code)
    record(new_card / "data", 2)
    fresh = audit_shipping.backlog(new_card / "data")
    assert (fresh.unshipped, fresh.shipped_seq) == (2, 0)
    shipped = runner.invoke(main, ["--config", str(new_config), "outbox", "ship-audit"])
    assert shipped.exit_code == 0, shipped.output
    assert "2 audit records shipped" in shipped.output and "up to seq 2" in shipped.output

    key_server.add_user("audrey", role="auditor")
    chains = key_server.get("/v1/stations/ward-3/audit/chains", who="audrey").json()["chains"]
    assert [(c["first_seq"], c["last_seq"], c["records"]) for c in chains] == [(1, 3, 3), (1, 2, 2)]
    verified = key_server.get("/v1/stations/ward-3/audit/verify", who="audrey").json()
    assert verified["ok"] and verified["records"] == 5 and len(verified["chains"]) == 2
    newest = key_server.get("/v1/stations/ward-3/audit", who="audrey").json()
    assert newest["chain"] == chains[1]["chain"] and newest["last_seq"] == 2
    # The old card's token was revoked by the re-enrollment: it can add nothing to the old chain.
    record(old_card / "data", 1)
    refused = runner.invoke(main, ["--config", str(old_config), "outbox", "ship-audit"])
    assert refused.exit_code == 1 and "401" in refused.output


def test_a_pointer_left_from_another_chain_counts_as_nothing_shipped(
    key_server: KeyServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    record(data_dir, 3)
    client = StationClient(key_server.url, key_server.enroll("ward-3"), "ward-3")
    assert audit_shipping.ship(data_dir, client) == 3
    assert audit_shipping.backlog(data_dir).shipped_seq == 3
    # The local trail is replaced (the audit table emptied; the pointer row stays): a new chain begins.
    db = sqlite3.connect(data_dir / "outbox.sqlite", isolation_level=None)
    db.execute("DELETE FROM audit")
    db.close()
    record(data_dir, 2)
    behind = audit_shipping.backlog(data_dir)
    assert (behind.unshipped, behind.shipped_seq) == (2, 0)
    assert audit_shipping.ship(data_dir, client) == 2
    assert audit_shipping.backlog(data_dir) == audit_shipping.Backlog(0, None, 2)
    key_server.add_user("audrey", role="auditor")
    chains = key_server.get("/v1/stations/ward-3/audit/chains", who="audrey").json()["chains"]
    assert [c["records"] for c in chains] == [3, 2]


def test_a_pointer_table_from_before_chains_is_kept(key_server: KeyServer, tmp_path: Path) -> None:
    """outbox.sqlite files written before the pointer named its chain: the pointer is the local chain's."""
    data_dir = tmp_path / "data"
    record(data_dir, 3)
    client = StationClient(key_server.url, key_server.enroll("ward-3"), "ward-3")
    db = sqlite3.connect(data_dir / "outbox.sqlite", isolation_level=None)
    records = audit.exported(db)
    db.execute(
        "CREATE TABLE audit_shipped (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "last_seq INTEGER NOT NULL, shipped_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO audit_shipped VALUES (1, 2, 0)")
    db.close()
    chain = records[0]["hash"]
    assert client.ship_audit(chain, records[:2])["accepted"] == 2  # what the old pointer says was confirmed
    assert audit_shipping.backlog(data_dir) == audit_shipping.Backlog(1, records[2]["at"], 2)
    assert audit_shipping.ship(data_dir, client) == 1  # only seq 3 is sent
    assert audit_shipping.backlog(data_dir) == audit_shipping.Backlog(0, None, 3)
