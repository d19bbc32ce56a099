"""Readiness for monitoring (keyserver/health.py): GET /readyz and `keyserver doctor`, on both backends.

A healthy server passes; each way it cannot release keys fails with a fix (no active KEK, KEKs that the
master secret does not unlock, a database that does not answer, an audit head out of step with the log);
an overdue KEK rotation warns. The HTTP answer names no path and no secret.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from keyserver import cli, db, health
from keyserver.masterkey import MasterKey
from keyserver.models import audit_head
from keyserver.models import keks as keks_table
from tests.net import free_port

from .conftest import KeyServer


def _by_name(results: list[health.CheckResult]) -> dict[str, health.CheckResult]:
    return {r.name: r for r in results}


def _checks(ks: KeyServer, master: MasterKey | None = None) -> dict[str, health.CheckResult]:
    return _by_name(health.run_checks(ks.config, ks.engine, master or ks.master))


def test_a_healthy_server_is_ready_and_says_nothing_private(ks: KeyServer) -> None:
    r = ks.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "pass"
    assert [c["name"] for c in body["checks"]] == [
        "database",
        "schema",
        "KEKs",
        "KEK rotation",
        "audit chain",
        "inbox space",
    ]
    assert {c["status"] for c in body["checks"]} == {"pass"}
    assert (
        _by_name([health.CheckResult(**c) for c in body["checks"]])["KEKs"].detail == "1 usable, current v1"
    )
    text = r.text
    assert str(ks.config.data_dir) not in text and str(ks.config.master_secret_file) not in text
    assert ks.config.master_secret_file.read_text() not in text  # type: ignore[union-attr]


def test_no_active_kek_fails_with_the_fix(ks: KeyServer) -> None:
    with db.write(ks.engine) as conn:
        conn.execute(update(keks_table).values(status="retired"))
    kek = _checks(ks)["KEKs"]
    assert kek.status == "fail" and "no active KEK" in kek.detail and "kek rotate" in kek.fix
    assert _checks(ks)["KEK rotation"].status == "skip"


def test_keks_the_master_secret_does_not_unlock_fail(ks: KeyServer) -> None:
    ks.rotate()  # v1 retired, v2 active: both must unlock (v1 still opens older reports)
    kek = _checks(ks, MasterKey(b"another master secret, not the one these KEKs were made with"))["KEKs"]
    assert kek.status == "fail" and kek.detail.startswith("v1, v2 of 2 do not unlock")
    assert _checks(ks)["KEKs"].detail == "2 usable, current v2"


def test_an_overdue_rotation_warns_and_stays_ready(ks: KeyServer) -> None:
    days = ks.config.kek_rotation_days
    with db.write(ks.engine) as conn:
        old = db.utcnow() - dt.timedelta(days=days + 3)
        conn.execute(update(keks_table).where(keks_table.c.status == "active").values(created_at=old))
    rotation = _checks(ks)["KEK rotation"]
    assert rotation.status == "warn" and f"{days + 3} days old" in rotation.detail
    assert "keyserver-rotate.timer" in rotation.fix
    body, status = health.readiness_body(health.run_checks(ks.config, ks.engine, ks.master))
    assert status == 200 and body["status"] == "warn"


def test_an_audit_head_out_of_step_fails(ks: KeyServer) -> None:
    with db.write(ks.engine) as conn:
        conn.execute(update(audit_head).values(seq=audit_head.c.seq + 5))  # as if records were deleted
    audit = _checks(ks)["audit chain"]
    assert audit.status == "fail" and "audit verify" in audit.fix


def test_a_database_that_does_not_answer_fails_and_skips_what_needs_it(ks: KeyServer, tmp_path: Path) -> None:
    if ks.engine.dialect.name == "postgresql":
        url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    else:
        url = f"sqlite:///{tmp_path / 'missing-dir' / 'keyserver.db'}"
    engine = db.make_engine(url)
    try:
        results = _by_name(health.run_checks(ks.config, engine, ks.master))
    finally:
        engine.dispose()
    assert results["database"].status == "fail" and "database_url" in results["database"].fix
    assert {results[n].status for n in ("schema", "KEKs", "KEK rotation", "audit chain")} == {"skip"}
    body, status = health.readiness_body(list(results.values()))
    assert status == 503 and body["status"] == "fail"


def test_readyz_answers_503_when_a_check_fails(ks: KeyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with db.write(ks.engine) as conn:
        conn.execute(update(keks_table).values(status="retired"))
    monkeypatch.setattr(health, "CACHE_SECONDS", 0.0)  # the test server's cache may hold a passing run
    r = ks.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "fail"


def test_keyserver_doctor_prints_each_check_and_exits_1_on_a_failure(ks: KeyServer, tmp_path: Path) -> None:
    c = ks.config
    config = tmp_path / "doctor.toml"
    config.write_text(
        f'data_dir = "{c.data_dir}"\ndatabase_url = "{c.database_url}"\n'
        f'master_secret_file = "{c.master_secret_file}"\nallow_generated_master_secret = false\n'
    )
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["--config", str(config), "doctor"])
    assert ok.exit_code == 0, ok.output
    assert "[ ok ] KEKs" in ok.output and "overall: pass" in ok.output
    as_json = runner.invoke(cli.main, ["--config", str(config), "doctor", "--json"])
    assert as_json.exit_code == 0 and {r["status"] for r in json.loads(as_json.output)} == {"pass"}

    # A master secret file that is gone: the KEKs check fails and says why.
    config.write_text(config.read_text().replace(str(c.master_secret_file), str(tmp_path / "gone.secret")))
    failed = runner.invoke(cli.main, ["--config", str(config), "doctor"])
    assert failed.exit_code == 1, failed.output
    assert "[FAIL] KEKs" in failed.output and "overall: fail" in failed.output
