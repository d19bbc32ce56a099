"""`make demo` support: a ready SQLite key server with a KEK, demo users and an enrollment code.

Idempotent: the first call creates everything and keeps the generated passwords in
``data_dir/demo-credentials.json`` (0600, demo only) so later calls print the same ones; a fresh enrollment
code is made whenever the previous one is used or about to expire.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from keyserver import db, keks, stations, users
from keyserver.config import Config, load_config
from keyserver.masterkey import load_master_key

ACTOR = "system:demo"
ADMIN, CLINICIAN = "admin", "nurse.lee"
CLINICIAN_EMAIL = "nurse.lee@clinic.example"
DEMO_PORT = 8470


def _config(data_dir: Path, port: int) -> tuple[Path, Config]:
    path = data_dir / "keyserver.toml"
    if not path.exists():
        path.write_text(
            f'data_dir = "."\npublic_base_url = "http://127.0.0.1:{port}"\ninbox_retention_days = 7\n'
        )
    return path, load_config(path)


def prepare(data_dir: str | os.PathLike[str], *, port: int = DEMO_PORT) -> dict[str, Any]:
    """Create (or reuse) the demo key server in data_dir; returns what the demo runner needs."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path, config = _config(data_dir, port)
    engine = db.engine_for(config)
    db.upgrade(engine)
    master = load_master_key(config)
    creds_path = data_dir / "demo-credentials.json"
    creds: dict[str, Any] = json.loads(creds_path.read_text()) if creds_path.exists() else {}
    with db.write(engine) as conn:
        if not keks.list_keks(conn):
            keks.rotate(conn, master, actor=ACTOR)
        for name, role, email in ((ADMIN, "admin", None), (CLINICIAN, "clinician", CLINICIAN_EMAIL)):
            if users.get_user(conn, name) is None:
                password = "-".join(secrets.token_hex(3) for _ in range(3))  # 20 characters, easy to type
                users.add_user(conn, username=name, password=password, role=role, email=email, actor=ACTOR)
                creds[name] = password
        code_info = creds.get("enrollment_code")
        fresh = code_info and dt.datetime.fromisoformat(code_info["expires_at"]) > db.utcnow() + dt.timedelta(
            minutes=5
        )
        if not fresh or _code_used(conn, code_info["code"]):
            code, expires = stations.create_code(conn, actor=ACTOR, minutes=24 * 60)
            creds["enrollment_code"] = {"code": code, "expires_at": expires.isoformat()}
    fd = os.open(creds_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(creds, handle, indent=1)
    engine.dispose()
    result = {
        "url": config.public_base_url,
        "port": port,
        "config_path": str(config_path),
        "data_dir": str(data_dir),
        "admin": {"username": ADMIN, "password": creds.get(ADMIN)},
        "clinician": {"username": CLINICIAN, "email": CLINICIAN_EMAIL, "password": creds.get(CLINICIAN)},
        "enrollment_code": creds["enrollment_code"]["code"],
        "serve_command": ["keyserver", "--config", str(config_path), "serve", "--port", str(port)],
    }
    print(f"key server demo: {result['url']}  (config {config_path})")
    print(f"  admin      {ADMIN} / {result['admin']['password']}")
    print(f"  clinician  {CLINICIAN} / {result['clinician']['password']}")
    print(f"  station enrollment code: {result['enrollment_code']}")
    return result


def _code_used(conn: Any, code: str) -> bool:
    from sqlalchemy import select

    from keyserver.models import enrollment_codes

    row = conn.execute(
        select(enrollment_codes.c.used_at).where(
            enrollment_codes.c.code_hash == users.hash_token(stations._normalize_code(code))
        )
    ).first()
    return row is None or row.used_at is not None
