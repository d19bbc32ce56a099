"""A station reinstalled on a fresh card under the same id ships a new chain, on both backends: accepted and
audited as `new_chain`, the old chain intact and verifiable; forged chain ids refused; verification of
every chain (including chains removed or inserted behind the API's back); the station trails page."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import delete, update

from keyserver import audit, db, station_trails
from keyserver.cli import main as keyserver_main
from keyserver.models import station_audit as station_audit_table
from kiosk import audit as station_chain
from kiosk import audit_shipping
from kiosk.keyserver_client import KeyServerError, StationClient

from .conftest import PASSWORD, KeyServer
from .test_station_audit import chain_of, exported, record_events, station
from .web import login


def reinstall(ks: KeyServer, tmp_path: Path, station_id: str = "ward-1") -> tuple[StationClient, Path]:
    """A fresh card (empty data dir) enrolled again under the same id with a re-enrollment code."""
    code = ks.enrollment_code(station_id)
    answer = requests.post(
        f"{ks.url}/v1/stations/enroll", json={"code": code, "station_id": station_id}, timeout=10
    )
    assert answer.status_code == 201, answer.text
    data_dir = tmp_path / f"reinstalled-{station_id}"
    data_dir.mkdir()
    return StationClient(ks.url, answer.json()["token"], station_id), data_dir


def station_records(ks: KeyServer, outcome: str) -> list[dict[str, Any]]:
    with db.read(ks.engine) as conn:
        return [r for r in audit.query(conn, action="station.audit", limit=1000) if r["outcome"] == outcome]


def test_a_reinstalled_station_starts_a_new_chain(ks: KeyServer, tmp_path: Path) -> None:
    old_client, old_dir = station(ks, tmp_path)
    record_events(old_dir, 5)
    assert audit_shipping.ship(old_dir, old_client, batch=3) == 5
    old_chain = chain_of(old_dir)

    client, new_dir = reinstall(ks, tmp_path)
    record_events(new_dir, 4, actor="nurse-9")
    new_chain = chain_of(new_dir)
    assert new_chain != old_chain and exported(new_dir)[0]["seq"] == 1
    assert audit_shipping.ship(new_dir, client) == 4
    assert audit_shipping.backlog(new_dir) == audit_shipping.Backlog(0, None, 4)

    # The key server's own log shows the reinstall: a new chain, following the old one.
    [first, reinstalled] = station_records(ks, "new_chain")
    assert first["details"]["chain"] == old_chain and first["details"]["previous_chain"] is None
    assert reinstalled["actor"] == "station:ward-1"
    assert reinstalled["details"] == {
        "chain": new_chain,
        "previous_chain": old_chain,
        "accepted": 4,
        "last_seq": 4,
        "head": exported(new_dir)[-1]["hash"],
    }
    assert [r["details"]["chain"] for r in station_records(ks, "ok")] == [old_chain]  # seq 4-5
    assert not station_records(ks, "denied")

    ks.add_user("audrey", role="auditor")
    chains = ks.get("/v1/stations/ward-1/audit/chains", who="audrey").json()
    assert chains["station_id"] == "ward-1"
    assert [(c["chain"], c["first_seq"], c["last_seq"], c["records"]) for c in chains["chains"]] == [
        (old_chain, 1, 5, 5),
        (new_chain, 1, 4, 4),
    ]
    summary = chains["chains"][0]
    assert summary["first_at"] <= summary["last_at"] and summary["first_received_at"].endswith("+00:00")
    newest = ks.get("/v1/stations/ward-1/audit", who="audrey").json()
    assert newest["chain"] == new_chain and newest["last_seq"] == 4
    assert [r["actor"] for r in newest["records"]] == ["nurse-9"] * 4
    older = ks.get(f"/v1/stations/ward-1/audit?chain={old_chain}&after=1&limit=2", who="audrey").json()
    assert older["chain"] == old_chain and older["last_seq"] == 5
    local = exported(old_dir)
    assert [{k: r[k] for k in station_chain.FIELDS} for r in older["records"]] == local[1:3]
    missing = ks.get(f"/v1/stations/ward-1/audit?chain={'b' * 64}", who="audrey")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_chain"
    assert ks.get("/v1/stations/ward-1/audit?chain=nothex", who="audrey").status_code == 400
    assert ks.get("/v1/stations/nowhere/audit/chains", who="audrey").status_code == 404

    verified = ks.get("/v1/stations/ward-1/audit/verify", who="audrey").json()
    assert verified["ok"] and verified["records"] == 9
    assert [(c["chain"], c["ok"], c["head_seq"], c["anchored_seq"]) for c in verified["chains"]] == [
        (old_chain, True, 5, 5),
        (new_chain, True, 4, 4),
    ]
    # The old card's token is revoked; the new installation keeps shipping its own chain.
    record_events(old_dir, 1)
    with pytest.raises(KeyServerError) as caught:
        audit_shipping.ship(old_dir, old_client)
    assert caught.value.status == 401
    record_events(new_dir, 2)
    assert audit_shipping.ship(new_dir, client) == 2
    assert [r["details"]["chain"] for r in station_records(ks, "ok")] == [old_chain, new_chain]

    runner = CliRunner()
    config = tmp_path / "ks.toml"
    config.write_text(
        f'data_dir = "{ks.config.data_dir}"\ndatabase_url = "{ks.config.database_url}"\n'
        f'master_secret_file = "{ks.config.master_secret_file}"\nallow_generated_master_secret = false\n'
    )
    listing = runner.invoke(keyserver_main, ["--config", str(config), "station", "audit", "ward-1"])
    assert listing.exit_code == 0, listing.output
    headers = [line for line in listing.output.splitlines() if line.startswith("chain ")]
    assert headers[0].startswith(f"chain {old_chain}: seq 1-5") and headers[1].startswith(
        f"chain {new_chain}: seq 1-6"
    )
    verify = runner.invoke(
        keyserver_main, ["--config", str(config), "station", "audit", "ward-1", "--verify"]
    )
    assert verify.exit_code == 0 and "station audit trail intact (2 chain(s))" in verify.output


def test_a_forged_chain_id_is_refused(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 4)
    records, chain = exported(data_dir), chain_of(data_dir)
    assert client.ship_audit(chain, records[:2])["accepted"] == 2

    def refused(named: str, batch: list[dict[str, Any]], status: int, reason: str) -> str:
        with pytest.raises(KeyServerError) as caught:
            client.ship_audit(named, batch)
        assert (caught.value.status, caught.value.reason) == (status, reason), caught.value
        return caught.value.message

    # Another installation's records under this chain's id, and this chain's records under another id.
    other_dir = tmp_path / "other"
    record_events(other_dir, 2)
    other = exported(other_dir)
    assert "not the stated chain id" in refused(chain, other, 400, "bad_record")
    assert "not the stated chain id" in refused(chain_of(other_dir), records[:2], 400, "bad_record")
    assert "not the stated chain id" in refused("c" * 64, records, 400, "bad_record")
    # A seq 1 that does not start from the all-zero hash (its own hash recomputed to match).
    fields = {**records[0], "prev_hash": "1" * 64}
    fields["hash"] = station_chain.digest(*(fields[f] for f in station_chain.FIELDS[:-1]))
    assert "all-zero" in refused(fields["hash"], [fields], 400, "bad_record")
    # A chain the server does not hold must start at seq 1; the answer says so.
    assert "send from seq 1" in refused(chain_of(other_dir), other[1:], 409, "chain_gap")
    assert client.ship_audit(chain_of(other_dir), []) == {
        "chain": chain_of(other_dir),
        "accepted": 0,
        "last_seq": 0,
        "last_hash": station_chain.GENESIS,
    }
    with db.read(ks.engine) as conn:
        assert [c["chain"] for c in station_trails.chains(conn, "ward-1")] == [chain]
        result = station_trails.verify(conn, "ward-1")
    assert result["ok"] and result["records"] == 2
    denied = station_records(ks, "denied")
    assert [d["details"]["reason"] for d in denied] == ["bad_record"] * 4 + ["chain_gap"]
    assert denied[0]["details"]["chain"] == chain


def test_verify_notices_chains_removed_or_inserted(ks: KeyServer, tmp_path: Path) -> None:
    old_client, old_dir = station(ks, tmp_path)
    record_events(old_dir, 3)
    audit_shipping.ship(old_dir, old_client)
    client, new_dir = reinstall(ks, tmp_path)
    record_events(new_dir, 2)
    audit_shipping.ship(new_dir, client)
    old_chain, new_chain = chain_of(old_dir), chain_of(new_dir)
    rows = station_audit_table.c
    with db.write(ks.engine) as conn:  # the whole old chain removed behind the API's back
        conn.execute(delete(station_audit_table).where(rows.chain == old_chain))
    with db.read(ks.engine) as conn:
        result = station_trails.verify(conn, "ward-1")
    assert not result["ok"] and [c["chain"] for c in result["chains"]] == [new_chain, old_chain]
    assert result["chains"][0]["ok"] and result["chains"][1]["records"] == 0
    assert "records removed or rewritten" in result["problems"][0]
    assert result["problems"][0].startswith(f"chain {old_chain[:16]}: ")

    # A made-up chain inserted directly: consistent in itself, but no accepted batch anchors it.
    fake_dir = tmp_path / "fake"
    record_events(fake_dir, 1)
    fake = exported(fake_dir)[0]
    with db.write(ks.engine) as conn:
        conn.execute(
            station_audit_table.insert().values(
                **fake, station_id="ward-1", chain=fake["hash"], received_at=db.utcnow()
            )
        )
    with db.read(ks.engine) as conn:
        result = station_trails.verify(conn, "ward-1")
    forged = next(c for c in result["chains"] if c["chain"] == fake["hash"])
    assert not forged["ok"] and "never accepted this chain" in forged["problems"][0]


def test_the_station_trails_page(ks: KeyServer, tmp_path: Path) -> None:
    old_client, old_dir = station(ks, tmp_path)
    record_events(old_dir, 3)
    audit_shipping.ship(old_dir, old_client)
    client, new_dir = reinstall(ks, tmp_path)
    record_events(new_dir, 2)
    audit_shipping.ship(new_dir, client)
    old_chain, new_chain = chain_of(old_dir), chain_of(new_dir)
    for name, role in (("audrey", "auditor"), ("root", "admin"), ("nurse.lee", "clinician")):
        ks.add_user(name, role=role)
    auditor, _ = login(ks.url, "audrey", PASSWORD)
    admin, _ = login(ks.url, "root", PASSWORD)
    clinician, _ = login(ks.url, "nurse.lee", PASSWORD)

    overview = auditor.get(f"{ks.url}/audit/stations", timeout=10)
    assert overview.status_code == 200
    assert f'data-chain="{old_chain}"' in overview.text and f'data-chain="{new_chain}"' in overview.text
    assert 'id="records"' not in overview.text
    assert 'href="/audit/stations"' in auditor.get(f"{ks.url}/audit", timeout=10).text

    page = admin.get(f"{ks.url}/audit/stations", params={"station": "ward-1"}, timeout=10)
    assert page.status_code == 200 and "2 chain(s), 5 records: intact" in page.text
    assert f"Newest records of chain <code>{new_chain}</code>" in page.text  # the newest installation
    assert page.text.count('<tr data-seq="') == 2
    chosen = auditor.get(
        f"{ks.url}/audit/stations", params={"station": "ward-1", "chain": old_chain}, timeout=10
    )
    seqs = [line.split('"')[1] for line in chosen.text.split("<tr data-seq=")[1:]]
    assert seqs == ["3", "2", "1"]  # newest first

    rows = station_audit_table.c
    with db.write(ks.engine) as conn:
        conn.execute(
            update(station_audit_table).where(rows.chain == old_chain, rows.seq == 2).values(actor="x")
        )
    broken = auditor.get(f"{ks.url}/audit/stations", params={"station": "ward-1"}, timeout=10)
    assert "BROKEN" in broken.text and "seq 2: content does not match its hash" in broken.text

    for params in ({"station": "nowhere"}, {"station": "ward-1", "chain": "d" * 64}):
        assert auditor.get(f"{ks.url}/audit/stations", params=params, timeout=10).status_code == 404
    assert clinician.get(f"{ks.url}/audit/stations", timeout=10).status_code == 403
    anonymous = requests.get(f"{ks.url}/audit/stations", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]


def test_a_station_with_no_trail_yet(ks: KeyServer, tmp_path: Path) -> None:
    station(ks, tmp_path)
    ks.add_user("audrey", role="auditor")
    assert ks.get("/v1/stations/ward-1/audit", who="audrey").json() == {
        "station_id": "ward-1",
        "chain": None,
        "last_seq": 0,
        "records": [],
    }
    assert ks.get("/v1/stations/ward-1/audit/chains", who="audrey").json()["chains"] == []
    verified = ks.get("/v1/stations/ward-1/audit/verify", who="audrey").json()
    assert verified == {"station_id": "ward-1", "ok": True, "records": 0, "chains": [], "problems": []}
    session, _ = login(ks.url, "audrey", PASSWORD)
    page = session.get(f"{ks.url}/audit/stations", params={"station": "ward-1"}, timeout=10)
    assert page.status_code == 200 and "has not shipped any record" in page.text


def test_the_local_chain_id_is_the_first_records_hash(tmp_path: Path) -> None:
    record_events(tmp_path, 2)
    conn = sqlite3.connect(tmp_path / "outbox.sqlite")
    try:
        assert audit_shipping.chain_id(conn) == exported(tmp_path)[0]["hash"]
    finally:
        conn.close()


def test_a_server_that_lost_a_whole_chain_gets_it_again_from_seq_1(ks: KeyServer, tmp_path: Path) -> None:
    client, data_dir = station(ks, tmp_path)
    record_events(data_dir, 3)
    assert audit_shipping.ship(data_dir, client) == 3
    with db.write(ks.engine) as conn:  # e.g. restored from a backup made before this installation shipped
        conn.execute(delete(station_audit_table))
    record_events(data_dir, 2)
    assert audit_shipping.ship(data_dir, client) == 5  # seq 4 meets "send from seq 1"; the station resends
    assert audit_shipping.backlog(data_dir).shipped_seq == 5
    assert [r["details"]["last_seq"] for r in station_records(ks, "new_chain")] == [3, 5]
    with db.read(ks.engine) as conn:
        result = station_trails.verify(conn, "ward-1")
    assert result["ok"] and result["records"] == 5
