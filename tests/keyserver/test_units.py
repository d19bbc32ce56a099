"""Configuration, master secret sources, KEK encryption at rest, migrations, demo preparation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select, update

from keyserver import db, demo, keks
from keyserver.config import ConfigError, load_config
from keyserver.masterkey import MasterKey, MasterKeyError, load_master_key
from keyserver.models import keks as keks_table

from .conftest import make_config


def test_config_file_relative_paths_and_validation(tmp_path: Path) -> None:
    file = tmp_path / "ks.toml"
    file.write_text('data_dir = "data"\ninbox_retention_days = 7\nsession_cookie_secure = true\n')
    config = load_config(file)
    assert config.data_dir == tmp_path / "data"
    assert config.effective_database_url == f"sqlite:///{tmp_path / 'data' / 'keyserver.sqlite3'}"
    assert config.effective_inbox_dir == tmp_path / "data" / "inbox"
    assert config.inbox_retention_days == 7 and config.session_cookie_secure
    file.write_text("no_such_key = 1\n")
    with pytest.raises(ConfigError, match="unknown config keys"):
        load_config(file)
    file.write_text("inbox_retention_days = 0\n")
    with pytest.raises(ConfigError):
        load_config(file)
    for key in ("login_max_failures", "enroll_max_failures_per_address", "enroll_window_minutes"):
        file.write_text(f"{key} = 0\n")
        with pytest.raises(ConfigError, match="limits and their windows must be positive"):
            load_config(file)
    file.write_text("enroll_max_failures_total = 500\nenroll_window_minutes = 60\n")
    config = load_config(file)
    assert (config.enroll_max_failures_total, config.enroll_window_minutes) == (500, 60)


def test_master_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, data_dir=str(tmp_path / "d"))
    generated = load_master_key(config)  # zero-config: created once, 0600
    key_file = tmp_path / "d" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    blob = generated.encrypt("kek", b"secret", b"aad")
    assert load_master_key(config).decrypt("kek", blob, b"aad") == b"secret"
    monkeypatch.setenv("KEYSERVER_MASTER_SECRET", "e" * 40)
    assert load_master_key(config).decrypt("kek", MasterKey(b"e" * 40).encrypt("kek", b"x", b""), b"") == b"x"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "keyserver-master").write_text("c" * 64)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    from_cred = load_master_key(config)
    assert from_cred.decrypt("kek", MasterKey(b"c" * 64).encrypt("kek", b"y", b""), b"") == b"y"
    with pytest.raises(MasterKeyError, match="wrong master secret"):
        from_cred.decrypt("kek", blob, b"aad")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.delenv("KEYSERVER_MASTER_SECRET")
    strict = load_config(None, data_dir=str(tmp_path / "e"), allow_generated_master_secret=False)
    with pytest.raises(MasterKeyError, match="no master secret"):
        load_master_key(strict)
    with pytest.raises(MasterKeyError, match="at least"):
        MasterKey(b"short")


def test_kek_private_keys_are_encrypted_and_bound_to_their_version(db_url: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, db_url)
    engine = db.make_engine(db_url)
    master = load_master_key(config)
    with db.write(engine) as conn:
        keks.rotate(conn, master, actor="test")
        keks.rotate(conn, master, actor="test")
        rows = {r.version: r for r in conn.execute(select(keks_table))}
    for row in rows.values():
        assert len(row.private_key_enc) == 12 + 32 + 16  # nonce + key + tag: nothing in the clear
    cache = keks.PrivateKeyCache(master)
    assert cache.get(1, rows[1].private_key_enc).public_key().public_bytes_raw() == rows[1].public_key
    # Swapping ciphertexts between versions is detected (AAD = version).
    with pytest.raises(MasterKeyError):
        keks.PrivateKeyCache(master).get(2, rows[1].private_key_enc)
    with db.write(engine) as conn:
        conn.execute(update(keks_table).where(keks_table.c.version == 1).values(status="retired"))
        assert [k.status for k in keks.list_keks(conn)] == ["retired", "active"]
    engine.dispose()


def test_head_revision_matches_the_migrations() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db.alembic_config("sqlite://"))
    assert script.get_current_head() == db.HEAD_REVISION


def test_migrations_create_the_model_schema(db_url: str) -> None:
    """Alembic's autogenerate finds no difference between the migrated database and models.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from keyserver.models import metadata

    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_demo_prepare_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = demo.prepare(tmp_path / "demo")
    second = demo.prepare(tmp_path / "demo")
    assert first["admin"]["password"] == second["admin"]["password"]
    assert first["clinician"]["username"] == "nurse.lee"
    assert first["enrollment_code"] == second["enrollment_code"]
    assert second["clinician"]["password"] in capsys.readouterr().out
    creds = tmp_path / "demo" / "demo-credentials.json"
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    config = load_config(first["config_path"])
    engine = db.engine_for(config)
    with db.read(engine) as conn:
        assert len(keks.list_keks(conn)) == 1
    engine.dispose()
