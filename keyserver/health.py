"""`keyserver doctor` and GET /readyz: can this key server release keys right now?

/healthz only says the process answers (no database: it is also the bench's no-op). Monitoring needs more:
that the database answers and its schema is current, that every KEK still needed unlocks with the master
secret (a wrong or lost master secret makes every report unopenable), that the current KEK is rotated on
time (the rotate timer may have stopped), that the audit chain's head is readable, and that the inbox has
room. The full chain walk (`keyserver audit verify`) and backups run on their own timers.

Nothing here reveals a key, a user or a report: a check's detail is counts, versions, ages and free space.
The answer over HTTP names no file system paths (anyone who can reach the server may ask).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, func, select, text

from keyserver import db, keks
from keyserver.config import Config
from keyserver.masterkey import MasterKey
from keyserver.models import audit_head, audit_log
from keyserver.models import keks as keks_table
from kiosk.checks import FAIL, PASS, SKIP, WARN, CheckResult, format_text, free_space, overall

# The rotate timer runs daily with --if-due: a day's grace before a due rotation counts as missed.
ROTATION_GRACE = dt.timedelta(days=1)
CACHE_SECONDS = 10.0  # /readyz answers from a recent run: cheap, but not free, and anonymous


def run_checks(
    config: Config,
    engine: Engine,
    master: MasterKey | None,
    *,
    paths: bool = True,
    master_problem: str = "the master secret could not be loaded",
) -> list[CheckResult]:
    """Every check, in order; a check that needs the database is skipped when it does not answer. Without
    `paths`, no result names a file system path."""
    results = [_database(engine)]
    if results[0].status == FAIL:
        names = ("schema", "KEKs", "KEK rotation", "audit chain")
        results += [CheckResult(name, SKIP, "the database does not answer") for name in names]
    else:
        results += [
            _schema(engine),
            _keks(engine, master, master_problem),
            _rotation(engine, config),
            _audit_head(engine),
        ]
    results.append(_inbox_space(config.effective_inbox_dir, paths))
    return results


def _inbox_space(inbox: Path, paths: bool) -> CheckResult:
    # The inbox directory appears with the first upload; until then its file system is its parent's.
    where = inbox if inbox.exists() else next((p for p in inbox.parents if p.exists()), inbox)
    fix = "free space on the inbox's file system; `keyserver inbox purge` deletes expired files"
    return free_space("inbox space", where, fix, show_path=paths)


def _database(engine: Engine) -> CheckResult:
    try:
        with db.read(engine) as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error: the point is to report it, not to crash the check
        return CheckResult(
            "database",
            FAIL,
            f"does not answer ({type(exc).__name__})",
            "check that the database server runs and `database_url` in keyserver.toml",
        )
    return CheckResult("database", PASS, engine.dialect.name)


def _schema(engine: Engine) -> CheckResult:
    if db.is_current(engine):
        return CheckResult("schema", PASS, f"revision {db.current_revision(engine)}")
    return CheckResult("schema", FAIL, "not current", "run `keyserver db upgrade`")


def _keks(engine: Engine, master: MasterKey | None, master_problem: str) -> CheckResult:
    with db.read(engine) as conn:
        rows = conn.execute(
            select(keks_table.c.version, keks_table.c.status, keks_table.c.private_key_enc)
            .where(keks_table.c.status != "destroyed")
            .order_by(keks_table.c.version)
        ).all()
    active = [r.version for r in rows if r.status == "active"]
    if not active:
        return CheckResult(
            "KEKs", FAIL, "no active KEK: stations cannot seal to it", "`keyserver kek rotate`"
        )
    if master is None:
        return CheckResult("KEKs", FAIL, master_problem, "see docs/keyserver.md, master secret")
    locked = []
    for row in rows:
        try:
            keks.decrypt_private(master, row.version, row.private_key_enc)
        except Exception:  # wrong secret or damaged row: the same answer, that version cannot be used
            locked.append(row.version)
    if locked:
        versions = ", ".join(f"v{v}" for v in locked)
        return CheckResult(
            "KEKs",
            FAIL,
            f"{versions} of {len(rows)} do not unlock with this master secret; their reports cannot open",
            "start the server with the master secret these KEKs were made with (restore it from backup)",
        )
    return CheckResult("KEKs", PASS, f"{len(rows)} usable, current v{active[0]}")


def _rotation(engine: Engine, config: Config) -> CheckResult:
    with db.read(engine) as conn:
        created = conn.execute(
            select(keks_table.c.created_at).where(keks_table.c.status == "active")
        ).scalar()
    if created is None:
        return CheckResult("KEK rotation", SKIP, "no active KEK")
    age = db.utcnow() - db.aware(created)  # type: ignore[operator]
    detail = f"current KEK {age.days} days old, rotated every {config.kek_rotation_days} days"
    if age > dt.timedelta(days=config.kek_rotation_days) + ROTATION_GRACE:
        return CheckResult(
            "KEK rotation",
            WARN,
            detail,
            "`keyserver kek rotate --if-due`; check `systemctl status keyserver-rotate.timer`",
        )
    return CheckResult("KEK rotation", PASS, detail)


def _audit_head(engine: Engine) -> CheckResult:
    with db.read(engine) as conn:
        head = conn.execute(select(audit_head.c.seq)).scalar()
        last = conn.execute(select(func.max(audit_log.c.seq))).scalar()
    if head is None or (last or 0) != head:
        return CheckResult(
            "audit chain",
            FAIL,
            f"head at {head}, last record {last}",
            "run `keyserver audit verify` and see docs/keyserver.md, audit",
        )
    return CheckResult("audit chain", PASS, f"{head} records (full check: keyserver-audit-verify.timer)")


class ReadinessCache:
    """The last run of the checks for /readyz, at most CACHE_SECONDS old."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._results: list[CheckResult] = []

    def results(self, config: Config, engine: Engine, master: MasterKey) -> list[CheckResult]:
        with self._lock:
            if not self._results or time.monotonic() - self._at > CACHE_SECONDS:
                self._results = run_checks(config, engine, master, paths=False)
                self._at = time.monotonic()
            return self._results


def readiness_body(results: list[CheckResult]) -> tuple[dict[str, Any], int]:
    status = overall(results)
    return {"status": status, "checks": [r.as_dict() for r in results]}, 503 if status == FAIL else 200


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, status, detail, fix}.")
@click.pass_obj
def doctor_command(c: Any, as_json: bool) -> None:
    """Check that this key server can release keys; exit 1 if anything fails."""
    config = c.config  # keyserver.cli.Context
    master: MasterKey | None = None
    problem = ""
    try:
        master = c.master()
    except click.ClickException as exc:  # reported by the KEKs check, which needs it
        problem = exc.message
    engine = db.engine_for(config)  # not c.engine(): a doctor does not migrate
    try:
        results = run_checks(config, engine, master, master_problem=problem or "no master secret")
    finally:
        engine.dispose()
    click.echo(json.dumps([r.as_dict() for r in results], indent=2) if as_json else format_text(results))
    raise SystemExit(1 if overall(results) == FAIL else 0)
