"""Issue 3 on both backends: audited inbox downloads (no record, no file), re-enabling and unlocking users
(CLI and admin page, with CSRF), TOTP and grants on the admin page, enrollment throttling shared through
the database, and two instances migrating one fresh database at the same time."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, inspect, text, update

from keyserver import audit, cli, db
from keyserver.models import login_failures, metadata

from .conftest import PASSWORD, KeyServer, make_config, start_server, stop_server
from .web import csrf_from, login

_SCRIPT = Path(sys.executable).parent / "keyserver"
KEYSERVER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keyserver"]


def _records(ks: KeyServer, **filters: str) -> list[dict]:
    with db.read(ks.engine) as conn:
        return audit.query(conn, **filters)


def _chain_ok(ks: KeyServer) -> bool:
    with db.read(ks.engine) as conn:
        return audit.verify(conn).ok


def _try_login(url: str, username: str, password: str) -> requests.Response:
    s = requests.Session()
    form = s.get(f"{url}/login", timeout=10)
    return s.post(
        f"{url}/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(form.text)},
        allow_redirects=False,
        timeout=10,
    )


def _inbox_report(ks: KeyServer, recipients: list[str]) -> tuple[str, bytes]:
    """A sealed report uploaded to the inbox by station ward-3; (report id, sealed bytes)."""
    if "ward-3" not in ks.tokens:
        ks.enroll("ward-3")
    path, package = ks.seal(f"r-{uuid.uuid4().hex[:8]}", station_id="ward-3", recipients=recipients)
    assert ks.post("/v1/inbox", "ward-3", data=path.read_bytes()).status_code == 201
    return package["header"]["report_id"], path.read_bytes()


def _refuse_audit_inserts(ks: KeyServer) -> tuple[str, str]:
    """SQL that makes every audit insert fail, and SQL that undoes it (as test_api does for unwrap)."""
    if ks.engine.dialect.name == "sqlite":
        return (
            "CREATE TRIGGER no_more BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'no'); END",
            "DROP TRIGGER no_more",
        )
    return (
        "ALTER TABLE audit_log ADD CONSTRAINT no_more CHECK (seq < 0) NOT VALID",
        "ALTER TABLE audit_log DROP CONSTRAINT no_more",
    )


# --- 1. inbox downloads -------------------------------------------------------------------------------


def test_inbox_download_is_audited_for_tokens_and_sessions(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    ks.add_user("dr.who")
    report_id, sealed = _inbox_report(ks, ["nurse.lee"])

    r = ks.get(f"/v1/inbox/{report_id}/file", "nurse.lee")
    assert r.status_code == 200 and r.content == sealed
    # The browser's report page fetches the same URL with its session cookie.
    session, _ = login(ks.url, "nurse.lee", PASSWORD)
    r = session.get(f"{ks.url}/v1/inbox/{report_id}/file", timeout=10)
    assert r.status_code == 200 and r.content == sealed
    assert ks.get(f"/v1/inbox/{report_id}/file", "dr.who").status_code == 403

    downloads = _records(ks, action="inbox.download")
    assert [(x["actor"], x["outcome"], x["report_id"]) for x in downloads] == [
        ("user:nurse.lee", "ok", report_id),
        ("user:nurse.lee", "ok", report_id),
        ("user:dr.who", "denied", report_id),
    ]
    ok = downloads[0]["details"]
    assert ok["ip"] == "127.0.0.1" and ok["size"] == len(sealed) and len(ok["sha256"]) == 64
    assert _chain_ok(ks)
    # Registered but not in the inbox: 404, and no download is recorded for bytes that were never sent.
    _, package = ks.seal("registered", station_id="ward-3", recipients=["nurse.lee"])
    assert ks.post("/v1/reports", "ward-3", json={"header": package["header"]}).status_code == 201
    r = ks.get(f"/v1/inbox/{package['header']['report_id']}/file", "nurse.lee")
    assert r.status_code == 404 and r.json()["error"] == "not_in_inbox"
    assert len(_records(ks, action="inbox.download")) == 3


def test_no_download_record_means_no_file(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    report_id, sealed = _inbox_report(ks, ["nurse.lee"])
    refuse, allow = _refuse_audit_inserts(ks)
    with db.write(ks.engine) as conn:
        conn.execute(text(refuse))
    r = ks.get(f"/v1/inbox/{report_id}/file", "nurse.lee")
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert sealed[:64] not in r.content and len(r.content) < 300
    with db.write(ks.engine) as conn:
        conn.execute(text(allow))
    assert _records(ks, action="inbox.download") == [] and _chain_ok(ks)  # the head did not move
    r = ks.get(f"/v1/inbox/{report_id}/file", "nurse.lee")
    assert r.status_code == 200 and r.content == sealed
    assert [x["outcome"] for x in _records(ks, action="inbox.download")] == ["ok"]


# --- 2. re-enabling and unlocking users from the CLI -----------------------------------------------------


@pytest.fixture
def run_cli(ks: KeyServer, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """The real `keyserver` command (in-process click runner) on the running server's database, with the
    server's configuration as it is at each call."""
    config = tmp_path / "cli.toml"
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> str:
        c = ks.config
        config.write_text(
            f'data_dir = "{c.data_dir}"\ndatabase_url = "{c.database_url}"\n'
            f'master_secret_file = "{c.master_secret_file}"\nallow_generated_master_secret = false\n'
            f"login_max_failures = {c.login_max_failures}\n"
        )
        result = runner.invoke(cli.main, ["--config", str(config), *args], catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    yield invoke


def test_cli_enable_and_unlock(ks: KeyServer, run_cli) -> None:  # type: ignore[no-untyped-def]
    ks.config.login_max_failures = 2  # read per request; fewer argon2 checks to reach the lockout
    old_token = ks.add_user("nurse.lee")
    run_cli("user", "disable", "nurse.lee")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 401
    assert "disabled" in run_cli("user", "list")
    assert "enabled" in run_cli("user", "enable", "nurse.lee")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 302
    # Re-enabling restores sign-in only: the tokens revoked by the disable stay revoked.
    assert ks.get("/v1/me", headers={"Authorization": f"Bearer {old_token}"}).status_code == 401

    for _ in range(ks.config.login_max_failures):
        assert _try_login(ks.url, "nurse.lee", "wrong password!").status_code == 401
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 429
    listing = run_cli("user", "list")
    assert any(line.split()[:3] == ["nurse.lee", "clinician", "locked"] for line in listing.splitlines())
    assert "cleared" in run_cli("user", "unlock", "nurse.lee")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 302
    assert "not locked" in run_cli("user", "unlock", "nurse.lee")
    assert "no user" in run_cli("user", "unlock", "ghost", ok=False)
    assert "no user" in run_cli("user", "enable", "ghost", ok=False)

    records = _records(ks, action="user.enable") + _records(ks, action="user.unlock")
    assert [(x["action"], x["details"]["user"]) for x in records] == [
        ("user.enable", "nurse.lee"),
        ("user.unlock", "nurse.lee"),
        ("user.unlock", "nurse.lee"),
    ]
    assert all(x["actor"].startswith("cli:") for x in records)
    assert records[1]["details"]["cleared"] == 1 and records[2]["details"]["cleared"] == 0
    assert _chain_ok(ks)


def test_cli_totp_remove(ks: KeyServer, run_cli) -> None:  # type: ignore[no-untyped-def]
    ks.add_user("nurse.lee")
    assert run_cli("user", "totp", "nurse.lee").startswith("otpauth://")
    assert "totp" in run_cli("user", "list")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).headers["Location"].startswith("/login/totp")
    assert "turned off" in run_cli("user", "totp", "nurse.lee", "--remove")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).headers["Location"] == "/"
    assert [x["details"]["user"] for x in _records(ks, action="user.totp_remove")] == ["nurse.lee"]


def test_cli_grants_add_list_remove(ks: KeyServer, run_cli) -> None:  # type: ignore[no-untyped-def]
    ks.add_user("dr.ada", groups=["dermatology"])
    _, package = ks.seal("r1", station_id="ward-3", recipients=["wound-care"])
    token = ks.tokens["dr.ada"]
    unwrap = {"header": package["header"], "wrapped_key": package["wrapped_key"]}

    def status() -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return ks.post("/v1/unwrap", json=unwrap, headers=headers).status_code  # type: ignore[no-any-return]

    assert status() == 403
    assert "no grants" in run_cli("grant", "list")
    assert "may open reports for wound-care" in run_cli(
        "grant", "add", "--group", "dermatology", "--recipient", "Wound-Care"
    )
    again = run_cli("grant", "add", "--group", "dermatology", "--recipient", "wound-care", ok=False)
    assert "already" in again
    assert "exactly one" in run_cli("grant", "add", "--recipient", "wound-care", ok=False)
    assert status() == 200
    listing = [line.split() for line in run_cli("grant", "list").splitlines()]
    assert listing == [[listing[0][0], "group", "dermatology", "->", "wound-care"]]
    assert "removed: group dermatology -> wound-care" in run_cli("grant", "remove", listing[0][0])
    assert "no grant" in run_cli("grant", "remove", listing[0][0], ok=False)
    assert status() == 403
    records = _records(ks, action="grant.add") + _records(ks, action="grant.remove")
    assert [(x["action"], x["details"]["recipient"]) for x in records] == [
        ("grant.add", "wound-care"),
        ("grant.remove", "wound-care"),
    ]
    assert all(x["actor"].startswith("cli:") for x in records)
    assert _chain_ok(ks)


# --- 3. user, TOTP and grant management on the admin page ------------------------------------------------


def _admin_post(session: requests.Session, url: str, data: dict[str, str]) -> requests.Response:
    return session.post(url, data=data, allow_redirects=False, timeout=10)


def _user_row(html: str, username: str) -> str:
    start = html.index(f'<tr id="user-{username}">')
    return html[start : html.index("</tr>", start)]


def test_admin_page_enables_unlocks_and_needs_csrf(ks: KeyServer) -> None:
    ks.config.login_max_failures = 2  # read per request; fewer argon2 checks to reach the lockout
    ks.add_user("root", role="admin")
    ks.add_user("nurse.lee")
    session, csrf = login(ks.url, "root", PASSWORD)
    base = f"{ks.url}/admin/users/nurse.lee"

    r = _admin_post(session, f"{base}/disable", {"csrf_token": csrf})
    assert r.status_code == 200 and "disabled" in _user_row(r.text, "nurse.lee")
    assert "/enable" in _user_row(r.text, "nurse.lee")
    # Every action needs the session's CSRF token: none, or a wrong one, changes nothing.
    for data in ({}, {"csrf_token": "forged"}):
        r = _admin_post(session, f"{base}/enable", data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 401
    r = _admin_post(session, f"{base}/enable", {"csrf_token": csrf})
    assert r.status_code == 200 and "user nurse.lee enabled" in r.text
    assert "active" in _user_row(r.text, "nurse.lee")

    for _ in range(ks.config.login_max_failures):
        _try_login(ks.url, "nurse.lee", "wrong password!")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 429
    page = session.get(f"{ks.url}/admin", timeout=10).text
    assert "locked out" in _user_row(page, "nurse.lee") and "/unlock" in _user_row(page, "nurse.lee")
    assert _admin_post(session, f"{base}/unlock", {}).status_code == 403
    r = _admin_post(session, f"{base}/unlock", {"csrf_token": csrf})
    assert r.status_code == 200 and "locked out" not in _user_row(r.text, "nurse.lee")
    assert _try_login(ks.url, "nurse.lee", PASSWORD).status_code == 302

    # An admin cannot disable their own account from the page (the button is not even shown).
    assert "/admin/users/root/disable" not in page
    r = _admin_post(session, f"{ks.url}/admin/users/root/disable", {"csrf_token": csrf})
    assert r.status_code == 400 and "your own account" in r.text
    r = _admin_post(session, f"{ks.url}/admin/users/ghost/enable", {"csrf_token": csrf})
    assert r.status_code == 400 and "no user ghost" in r.text

    actions = [
        (x["actor"], x["action"])
        for x in _records(ks)
        if x["action"].startswith("user.") and x["actor"] == "user:root"
    ]
    assert ("user:root", "user.disable") in actions
    assert ("user:root", "user.enable") in actions and ("user:root", "user.unlock") in actions
    assert _chain_ok(ks)


def test_admin_page_resets_and_removes_totp(ks: KeyServer) -> None:
    ks.add_user("root", role="admin")
    ks.add_user("nurse.lee")
    session, csrf = login(ks.url, "root", PASSWORD)
    url = f"{ks.url}/admin/users/nurse.lee/totp"
    assert "no" in _user_row(session.get(f"{ks.url}/admin", timeout=10).text, "nurse.lee")
    assert _admin_post(session, url, {"action": "reset"}).status_code == 403
    r = _admin_post(session, url, {"csrf_token": csrf, "action": "reset"})
    assert r.status_code == 200 and 'id="new-totp"' in r.text
    uri = r.text.split('id="new-totp">', 1)[1].split("<", 1)[0].replace("&amp;", "&")
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    assert "yes" in _user_row(r.text, "nurse.lee")
    # The secret shown works at the user's next sign-in, and it is shown only once.
    assert 'id="new-totp"' not in session.get(f"{ks.url}/admin", timeout=10).text
    s = requests.Session()
    form = s.get(f"{ks.url}/login", timeout=10)
    r = s.post(
        f"{ks.url}/login",
        data={"username": "nurse.lee", "password": PASSWORD, "csrf_token": csrf_from(form.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.headers["Location"].startswith("/login/totp")
    page = s.get(f"{ks.url}/login/totp", timeout=10)
    r = s.post(
        f"{ks.url}/login/totp",
        data={"code": pyotp.TOTP(secret).now(), "csrf_token": csrf_from(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302 and s.get(f"{ks.url}/inbox", timeout=10).status_code == 200

    r = _admin_post(session, url, {"csrf_token": csrf, "action": "remove"})
    assert r.status_code == 200 and "TOTP turned off" in r.text
    assert _try_login(ks.url, "nurse.lee", PASSWORD).headers["Location"] == "/"
    records = [x for x in _records(ks) if x["action"] in ("user.totp", "user.totp_remove")]
    assert ("user:root", "user.totp") in [(x["actor"], x["action"]) for x in records]
    assert ("user:root", "user.totp_remove") in [(x["actor"], x["action"]) for x in records]
    assert all(secret not in str(x["details"]) for x in _records(ks))
    assert _chain_ok(ks)


def test_admin_page_manages_grants(ks: KeyServer) -> None:
    ks.add_user("root", role="admin")
    ks.add_user("nurse.lee", groups=["derm"])
    report_id, sealed = _inbox_report(ks, ["dr.smith"])
    assert ks.get(f"/v1/inbox/{report_id}/file", "nurse.lee").status_code == 403
    session, csrf = login(ks.url, "root", PASSWORD)
    grant = {"subject_type": "group", "subject": "derm", "recipient": "Dr.Smith"}

    assert _admin_post(session, f"{ks.url}/admin/grants", grant).status_code == 403  # no CSRF token
    r = _admin_post(session, f"{ks.url}/admin/grants", {**grant, "csrf_token": csrf})
    assert r.status_code == 200 and "group derm may open reports for dr.smith" in r.text
    assert "derm" in _user_row(r.text, "nurse.lee")  # groups are listed with the user
    r = _admin_post(session, f"{ks.url}/admin/grants", {**grant, "csrf_token": csrf})
    assert r.status_code == 400 and "already" in r.text
    bad = {"subject_type": "role", "subject": "janitor", "recipient": "*", "csrf_token": csrf}
    assert _admin_post(session, f"{ks.url}/admin/grants", bad).status_code == 400
    r = ks.get(f"/v1/inbox/{report_id}/file", "nurse.lee")
    assert r.status_code == 200 and r.content == sealed

    page = session.get(f"{ks.url}/admin", timeout=10).text
    remove = page.split('action="/admin/grants/', 1)[1].split("/remove", 1)[0]
    assert _admin_post(session, f"{ks.url}/admin/grants/{remove}/remove", {}).status_code == 403
    r = _admin_post(session, f"{ks.url}/admin/grants/{remove}/remove", {"csrf_token": csrf})
    assert r.status_code == 200 and "grant removed" in r.text
    assert ks.get(f"/v1/inbox/{report_id}/file", "nurse.lee").status_code == 403
    records = [x for x in _records(ks) if x["action"].startswith("grant.")]
    assert [(x["actor"], x["action"], x["details"]["recipient"]) for x in records] == [
        ("user:root", "grant.add", "dr.smith"),
        ("user:root", "grant.remove", "dr.smith"),
    ]
    assert _chain_ok(ks)


# --- 4. enrollment throttling ----------------------------------------------------------------------------


def _enroll(url: str, code: str, station_id: str, ip: str) -> requests.Response:
    return requests.post(
        f"{url}/v1/stations/enroll",
        json={"code": code, "station_id": station_id},
        headers={"X-Forwarded-For": ip},
        timeout=10,
    )


@pytest.fixture
def two_instances(db_url: str, tmp_path: Path) -> Iterator[tuple[KeyServer, KeyServer]]:
    """Two key servers on one database (behind a proxy, so tests choose the client address)."""
    running = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        secret = tmp_path / "master.secret"
        if not secret.exists():
            secret.write_text("test-master-secret-" + uuid.uuid4().hex * 2)
        config = make_config(
            directory,
            db_url,
            master_secret_file=secret,
            trusted_proxy_hops=1,
            enroll_max_failures_per_address=4,
            enroll_window_minutes=7,
        )
        running.append(start_server(config))
    running[0][0].rotate()
    yield running[0][0], running[1][0]
    for server_state, server in running:
        stop_server(server)
        server_state.engine.dispose()


def test_enroll_failures_are_throttled_per_address_across_instances(two_instances) -> None:  # type: ignore[no-untyped-def]
    a, b = two_instances
    per_address = a.config.enroll_max_failures_per_address
    # The failures alternate between the two instances: the counter lives in the shared database.
    for i in range(per_address):
        r = _enroll((a, b)[i % 2].url, "AAAA-BBBB-CCCC-DDDD", "ward-3", "10.0.0.7")
        assert r.status_code == 403 and r.json()["error"] == "unknown_code"
    good = a.enrollment_code()
    for server in (a, b):  # now even a right code waits, on either instance
        r = _enroll(server.url, good, "ward-3", "10.0.0.7")
        assert r.status_code == 429, r.text
        assert r.json() == {"error": "throttled", "message": r.json()["message"]}
        assert "too many failed enrollment attempts" in r.json()["message"]
        retry = int(r.headers["Retry-After"])
        assert 0 < retry <= 7 * 60  # enroll_window_minutes, not the login lockout
    # Another address is not affected.
    assert _enroll(b.url, a.enrollment_code(), "ward-4", "10.0.0.8").status_code == 201

    denied = [x for x in _records(a, action="station.enroll") if x["outcome"] == "denied"]
    assert [x["details"]["reason"] for x in denied] == ["unknown_code"] * per_address + ["throttled"] * 2
    assert all(x["details"]["ip"] == "10.0.0.7" and x["actor"] == "anonymous" for x in denied)

    # After the window the address may try again (the window is moved back instead of waiting for it).
    window = dt.timedelta(minutes=a.config.enroll_window_minutes)
    with db.write(a.engine) as conn:
        conn.execute(
            update(login_failures).values(window_start=db.utcnow() - window - dt.timedelta(seconds=1))
        )
    r = _enroll(b.url, good, "ward-3", "10.0.0.7")
    assert r.status_code == 201 and r.json()["token"].startswith("kss_")
    assert _chain_ok(a)


def test_enroll_failures_are_throttled_globally(two_instances) -> None:  # type: ignore[no-untyped-def]
    a, b = two_instances
    for server in (a, b):  # read per request
        server.config.enroll_max_failures_per_address, server.config.enroll_max_failures_total = 2, 20
    for n in range(10):
        for server in (a, b):
            r = _enroll(server.url, "AAAA-BBBB-CCCC-DDDD", f"ward-{n}", f"10.0.1.{n}")
            assert r.status_code == 403, (n, r.text)
    # A guesser spread over many addresses trips the global limit: a fresh address now waits too.
    r = _enroll(a.url, a.enrollment_code(), "ward-new", "10.0.2.1")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    with db.write(a.engine) as conn:
        conn.execute(
            update(login_failures)
            .where(login_failures.c.key == "enroll:*")
            .values(window_start=db.utcnow() - dt.timedelta(minutes=a.config.enroll_window_minutes + 1))
        )
    assert _enroll(b.url, a.enrollment_code(), "ward-new", "10.0.2.1").status_code == 201


# --- 5. concurrent migrations ----------------------------------------------------------------------------


def _fresh_database(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    if backend == "sqlite":
        path = directory / "fresh.sqlite3"
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # as the key server sets it at every connect
        return f"sqlite:///{path}"
    cluster = request.getfixturevalue("pg_cluster")
    name = f"ks_fresh_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(cluster.url())
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))  # empty: not a clone of the migrated template
    admin.dispose()
    return str(cluster.url(name))


def _opened(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


class MigrationLockHolder:
    """Holds the lock db.upgrade takes (PostgreSQL: its advisory lock; SQLite: the write lock), and tells
    when both upgrade processes are waiting for it."""

    def __init__(self, engine: Engine, sqlite_path: Path) -> None:
        self.postgresql = engine.dialect.name == "postgresql"
        self.sqlite_path = sqlite_path
        if self.postgresql:
            self.conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self.conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": db.MIGRATION_LOCK})
        else:
            self.raw = sqlite3.connect(sqlite_path, isolation_level=None)
            self.raw.execute("BEGIN IMMEDIATE")

    def both_waiting(self, processes: list[subprocess.Popen[str]]) -> bool:
        if self.postgresql:
            waiting = self.conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar()
            return waiting == len(processes)
        if all(_opened(p.pid, self.sqlite_path) for p in processes):
            time.sleep(1.0)  # past the schema check (a read), into BEGIN IMMEDIATE (30 s busy timeout)
            return True
        return False

    def release(self) -> None:
        if self.postgresql:
            self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": db.MIGRATION_LOCK})
            self.conn.close()
        else:
            self.raw.execute("ROLLBACK")
            self.raw.close()


def test_two_instances_upgrade_one_fresh_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = _fresh_database(backend, request, tmp_path)
    config = tmp_path / "keyserver.toml"
    config.write_text(f'data_dir = "{tmp_path}"\ndatabase_url = "{url}"\n')
    engine = db.make_engine(url)
    # Both processes are started while the lock is held, so both are surely inside upgrade() together.
    holder = MigrationLockHolder(engine, tmp_path / "fresh.sqlite3")
    processes = [
        subprocess.Popen(
            [*KEYSERVER, "--config", str(config), "db", "upgrade"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not holder.both_waiting(processes):
            assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
            assert time.monotonic() < deadline, "the upgrades never waited for the migration lock"
            time.sleep(0.05)
        assert all(p.poll() is None for p in processes)  # both are waiting, neither has migrated
    finally:
        holder.release()
    for p in processes:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "database schema is current" in out

    assert db.current_revision(engine) == db.HEAD_REVISION
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(text("SELECT seq, hash FROM audit_head")).all() == [(0, audit.GENESIS)]
        tables = set(inspect(conn).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}
    # The schema works: a server starts on it and appends to the audit chain.
    server_state, server = start_server(make_config(tmp_path, url))
    try:
        server_state.rotate()
        assert _chain_ok(server_state)
    finally:
        stop_server(server)
        server_state.engine.dispose()
    engine.dispose()
