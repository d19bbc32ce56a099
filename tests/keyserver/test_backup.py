"""Backup and restore, across backends (SQLite → PostgreSQL and back), onto a server with another master
secret: afterwards a report sealed before the backup still unwraps, tokens still work, the chain verifies."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from keyserver import audit, backup, db
from keyserver.models import audit_log
from kiosk.sealing import envelope, rncryptor
from kiosk.sealing.sealed_file import read_sealed

from .conftest import PASSWORD, make_config, new_database, start_server, stop_server

PASSPHRASE = "a long backup passphrase"


@pytest.mark.parametrize(("source", "target"), [("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_backup_restore_round_trip(
    source: str, target: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ks_a, server_a = start_server(make_config(tmp_path / "a", new_database(source, request, tmp_path / "a")))
    try:
        ks_a.rotate()
        token = ks_a.add_user("nurse.lee")
        ks_a.add_user("dr.who", groups=["derm"])
        ks_a.enroll("ward-3")
        path, package = ks_a.seal(
            "r1", station_id="ward-3", recipients=["nurse.lee"], payload=b"bundle bytes"
        )
        assert ks_a.post("/v1/inbox", "ward-3", data=path.read_bytes()).status_code == 201
        assert ks_a.post("/v1/unwrap", "nurse.lee", json=package).status_code == 200
        ks_a.rotate()
        with db.write(ks_a.engine) as conn:
            blob = backup.create(conn, ks_a.master, PASSPHRASE, actor="test")
        with db.read(ks_a.engine) as conn:
            head_a = audit.verify(conn).head_hash
    finally:
        stop_server(server_a)
        ks_a.engine.dispose()
    assert b"nurse.lee" not in blob  # the file is encrypted

    config_b = make_config(tmp_path / "b", new_database(target, request, tmp_path / "b"))
    engine_b = db.make_engine(config_b.effective_database_url)
    from keyserver.masterkey import load_master_key

    master_b = load_master_key(config_b)
    with db.write(engine_b) as conn, pytest.raises(backup.BackupError, match="passphrase"):
        backup.restore(conn, master_b, blob, "the wrong passphrase", actor="test")
    with db.write(engine_b) as conn:
        records = backup.restore(conn, master_b, blob, PASSPHRASE, actor="test")
    with db.write(engine_b) as conn, pytest.raises(backup.BackupError, match="not empty"):
        backup.restore(conn, master_b, blob, PASSPHRASE, actor="test")
    with db.read(engine_b) as conn:
        result = audit.verify(conn)
        restored_head = conn.execute(
            select(audit_log.c.prev_hash).where(audit_log.c.seq == records + 1)
        ).scalar()
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar() == records + 1
    assert result.ok and restored_head == head_a
    engine_b.dispose()

    ks_b, server_b = start_server(config_b)
    try:
        ks_b.tokens["nurse.lee"] = token
        r = ks_b.post("/v1/unwrap", "nurse.lee", json=package)
        assert r.status_code == 200, r.text
        with open(path, "rb") as f:
            sealed = read_sealed(f)
            f.seek(sealed.payload_offset)
            message = f.read(sealed.header.payload_size)
        assert (
            rncryptor.decrypt(message, data_key=envelope.b64decode(r.json()["data_key"])) == b"bundle bytes"
        )
        assert ks_b.get("/v1/keys").json()["current"] == 2
        # New rows get fresh ids after the restored ones (sequences moved on PostgreSQL).
        ks_b.add_user("dr.new")
        from .web import login

        login(ks_b.url, "dr.who", PASSWORD)
    finally:
        stop_server(server_b)
        ks_b.engine.dispose()


def test_backup_and_restore_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = str(Path(sys.executable).parent / "keyserver")
    (tmp_path / "pp").write_text(PASSPHRASE)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ks.toml").write_text('data_dir = "."\n')

    def run(d: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = str(tmp_path / d / "ks.toml")
        return subprocess.run([script, "--config", config, *args], capture_output=True, text=True, timeout=60)

    assert run("a", "kek", "rotate").returncode == 0
    out = tmp_path / "backup.ksb"
    r = run("a", "backup", "--out", str(out), "--passphrase-file", str(tmp_path / "pp"))
    assert r.returncode == 0, r.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    r = run("b", "restore", str(out), "--passphrase-file", str(tmp_path / "pp"))
    assert r.returncode == 0, r.stderr
    assert "audit chain verified" in r.stdout
    assert (
        run("a", "kek", "list").stdout.split()[-1] == run("b", "kek", "list").stdout.split()[-1]
    )  # fingerprint
    assert (tmp_path / "a" / "master.key").read_text() != (tmp_path / "b" / "master.key").read_text()
