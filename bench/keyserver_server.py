"""The key server benchmarks' set-up (bench/keyserver.py, bench/keyserver_steps.py): a key server with a
clinician, a token and sealed reports to unwrap, served by gunicorn as production serves it, and the CPU it
uses per answered request."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from http_load import load, load_open
from sqlalchemy import func, select

from keyserver import audit, db, keks, users
from keyserver.config import load_config
from keyserver.masterkey import load_master_key
from keyserver.models import audit_log
from kiosk.sealing.sealed_file import EnvelopeSealer, write_sealed
from tests.keyserver.conftest import package_of

ROOT = Path(__file__).resolve().parent.parent

REPORTS = 64  # distinct sealed reports the clients cycle through
UNWRAP_WITHOUT_AUDIT = "/bench/unwrap-no-audit"  # bench/keyserver_ceiling.py


def prepare(directory: Path, database_url: str, port: int) -> tuple[Path, str, list[bytes]]:
    (directory / "master.secret").write_text(uuid.uuid4().hex * 2)
    config_path = directory / "keyserver.toml"
    config_path.write_text(
        f'data_dir = "."\ndatabase_url = "{database_url}"\nmaster_secret_file = "master.secret"\n'
        f'public_base_url = "http://127.0.0.1:{port}"\n'
    )
    config = load_config(config_path)
    engine = db.engine_for(config)
    db.upgrade(engine)
    master = load_master_key(config)
    with db.write(engine) as conn:
        keks.rotate(conn, master, actor="bench")
        users.add_user(
            conn, username="nurse.lee", password="bench password 123", role="clinician", actor="bench"
        )
        token = users.create_token(conn, "nurse.lee", actor="bench")
        kek = keks.public_keys(conn, config.public_base_url)[0]
    bodies = []
    for i in range(REPORTS):
        path = directory / f"r{i}.cpseal"
        with open(path, "wb") as out:
            write_sealed(
                out,
                lambda sink: sink.write(b"bundle" * 100),
                EnvelopeSealer(kek),
                report_id=str(uuid.uuid4()),
                station_id="ward-3",
                created_at="2026-01-02T03:04:05Z",
                recipients=["nurse.lee"],
            )
        bodies.append(json.dumps(package_of(path)).encode())
    engine.dispose()
    return config_path, token, bodies


def audit_verified(config_path: Path) -> bool:
    """`keyserver audit verify` on the bench's database: the chain stayed intact under load."""
    engine = db.engine_for(load_config(config_path))
    with db.read(engine) as conn:
        result = audit.verify(conn)
    engine.dispose()
    return result.ok


def audit_count(config_path: Path) -> int:
    engine = db.engine_for(load_config(config_path))
    with db.read(engine) as conn:
        count = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.action == "key.release")
        ).scalar()
    engine.dispose()
    return int(count or 0)


def _tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid in cpu:
        p = pid
        while p > 1:
            if p in roots:
                total += cpu[pid]
                break
            p = parent.get(p, 0)
    return total


def measure(server: int, database: int | None, *args: Any, rate: float | None = None) -> dict[str, Any]:
    """load() (or load_open() at `rate`) plus CPU per answered request: server side (gunicorn processes +
    PostgreSQL backends: the figure that does not depend on what else runs on the machine), the database's
    share of it, and the client processes' (which share the same 2 cores; the same client code measures
    no-op and unwrap)."""
    roots = [server] + ([database] if database else [])
    before, db_before, clients_before = (
        _tree_cpu(roots),
        _tree_cpu([database] if database else []),
        os.times(),
    )
    result = load(*args) if rate is None else load_open(*args, rate=rate)
    clients = os.times()
    n = max(result["ok"], 1)
    result["cpu_ms"] = (_tree_cpu(roots) - before) * 1000 / n
    result["db_cpu_ms"] = (_tree_cpu([database] if database else []) - db_before) * 1000 / n
    # load() joins its client processes, so their CPU is in this process's reaped-children times.
    client_cpu = clients.children_user + clients.children_system
    result["client_cpu_ms"] = (
        (client_cpu - clients_before.children_user - clients_before.children_system) * 1000 / n
    )
    return result


# Bench-only apps (bench/): the key server's app plus bench routes, each loaded only with its variable set.
BENCH_APPS = {
    "ceiling": ("keyserver_ceiling:app", "KEYSERVER_BENCH_CEILING"),  # + the unwrap without audit
    "steps": ("keyserver_steps_app:app", "KEYSERVER_BENCH_STEPS"),  # + CPU counters per step
}


def serve(
    config_path: Path,
    port: int,
    workers: int,
    threads: int,
    *,
    pin: bool = True,
    bench_app: str | None = None,
) -> subprocess.Popen[bytes]:
    """gunicorn as deploy/keyserver/keyserver.service runs it: the same settings (keyserver.gunicorn_conf:
    workers pinned to CPUs unless `pin` is false), gthread workers x threads. With `bench_app` (a key of
    BENCH_APPS), the app is that bench-only module's: the key server's app plus its bench routes."""
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = {
        **os.environ,
        "KEYSERVER_CONFIG": str(config_path),
        "KEYSERVER_PIN_WORKERS": "1" if pin else "0",
    }
    app = "keyserver.wsgi:app"
    if bench_app is not None:
        app, variable = BENCH_APPS[bench_app]
        env[variable] = "1"
        # ROOT first: bench/keyserver.py (this script) must not shadow the keyserver package.
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "bench")])
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "-c",
            "python:keyserver.gunicorn_conf",
            "-k",
            "gthread",
            "-w",
            str(workers),
            "--threads",
            str(threads),
            "-b",
            f"127.0.0.1:{port}",
            "--keep-alive",
            "30",
            "--log-level",
            "warning",
            app,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gunicorn did not start: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
