"""Browser sessions and login: server-side sessions, CSRF tokens, rate limiting with lockout, TOTP.

The cookie holds a random session id; the database holds only its SHA-256, so a database reader cannot
hijack sessions, and logout or disabling a user ends them at once. Failed logins are counted per username
and per client address in a fixed window; past the limit, logins are refused until the window ends (the
same answer whether or not the user exists, so the lockout does not reveal accounts). The counters are rows
in the database (throttled_until / count_failures), shared by every instance; station enrollment reuses them.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keyserver import audit
from keyserver.config import Config
from keyserver.db import aware, utcnow
from keyserver.masterkey import MasterKey
from keyserver.models import login_failures, users, web_sessions
from keyserver.users import Principal, UserError, check_password, check_totp, get_user, hash_token

LAST_SEEN_GRANULARITY = dt.timedelta(seconds=60)  # avoid a write per request


@dataclass(frozen=True)
class WebSession:
    principal: Principal
    csrf_token: str
    pending_totp: bool


class LoginRefused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def throttled_until(conn: Connection, limits: dict[str, int], window: dt.timedelta) -> dt.datetime | None:
    """When the last of these failure counters that is over its limit frees up; None if none is over.

    The counters live in the database (login_failures), not in process memory, so every server process
    and host sharing the database sees the same counts.
    """
    now, until = utcnow(), None
    for row in conn.execute(select(login_failures).where(login_failures.c.key.in_(list(limits)))).mappings():
        end = aware(row["window_start"]) + window  # type: ignore[operator]
        if row["count"] >= limits[row["key"]] and now < end:
            until = end if until is None else max(until, end)
    return until


def count_failures(conn: Connection, keys: list[str], window: dt.timedelta) -> None:
    """Count one failure against each key in a fixed window (a counter past its window starts again).

    One upsert per key: concurrent failures on the same key (several instances, a shared global key)
    neither lose counts nor collide on the primary key.
    """
    now = utcnow()
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for key in keys:
        stmt = insert(login_failures).values(key=key, count=1, window_start=now)
        expired = login_failures.c.window_start <= now - window
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[login_failures.c.key],
                set_={
                    "count": case((expired, 1), else_=login_failures.c.count + 1),
                    "window_start": case(
                        (expired, stmt.excluded.window_start), else_=login_failures.c.window_start
                    ),
                },
            )
        )


def _login_window(config: Config) -> dt.timedelta:
    return dt.timedelta(minutes=config.login_lockout_minutes)


def _login_limits(keys: list[str], config: Config) -> dict[str, int]:
    # Per username the configured limit; per client address 4x (several people may share a ward's NAT).
    return {k: config.login_max_failures * (1 if k.startswith("u:") else 4) for k in keys}


def _locked(conn: Connection, keys: list[str], config: Config) -> bool:
    return throttled_until(conn, _login_limits(keys, config), _login_window(config)) is not None


def _failure_keys(username: str, ip: str | None) -> list[str]:
    return [f"u:{username.strip().lower()[:200]}", f"ip:{ip or 'unknown'}"]


def locked_usernames(conn: Connection, config: Config) -> set[str]:
    """Usernames whose login is locked out right now (for the admin page and `keyserver user list`)."""
    now, window = utcnow(), _login_window(config)
    rows = conn.execute(
        select(login_failures).where(
            login_failures.c.key.startswith("u:"),
            login_failures.c.count >= config.login_max_failures,
            login_failures.c.window_start > now - window,
        )
    )
    return {r.key[2:] for r in rows}


def unlock(conn: Connection, username: str, *, actor: str, address: str | None = None) -> int:
    """Clear the login lockout of a user (and optionally of a client address); audited. Returns the
    number of counters cleared. Raises UserError for an unknown user."""
    username = username.strip().lower()
    if get_user(conn, username) is None:
        raise UserError(f"no user {username}")
    user_key, address_key = _failure_keys(username, address)
    keys = [user_key, address_key] if address else [user_key]
    cleared = conn.execute(delete(login_failures).where(login_failures.c.key.in_(keys))).rowcount
    audit.append(
        conn,
        actor=actor,
        action="user.unlock",
        outcome="ok",
        details={"user": username, "address": address, "cleared": cleared},
    )
    return int(cleared)


def login(
    conn: Connection, config: Config, *, username: str, password: str, ip: str | None
) -> tuple[str, WebSession]:
    """Check the password; returns (cookie value, session). Raises LoginRefused; always audited.

    Runs in a write transaction, so the failure counters and the audit record commit together.
    """
    keys = _failure_keys(username, ip)
    actor = f"user:{username.strip().lower()[:64]}"
    if _locked(conn, keys, config):
        audit.append(
            conn, actor=actor, action="user.login", outcome="denied", details={"reason": "locked", "ip": ip}
        )
        raise LoginRefused(429, "locked", "too many failed attempts; try again later")
    row = get_user(conn, username)
    if not check_password(row, password) or row is None or row["disabled"]:
        count_failures(conn, keys, _login_window(config))
        audit.append(
            conn,
            actor=actor,
            action="user.login",
            outcome="denied",
            details={"reason": "bad_credentials", "ip": ip},
        )
        raise LoginRefused(401, "bad_credentials", "wrong username or password")
    conn.execute(delete(login_failures).where(login_failures.c.key == keys[0]))
    pending = row["totp_secret_enc"] is not None
    cookie, session = _create(conn, row, pending_totp=pending)
    audit.append(
        conn,
        actor=actor,
        action="user.login",
        outcome="totp_required" if pending else "ok",
        details={"ip": ip},
    )
    return cookie, session


def verify_totp(
    conn: Connection,
    config: Config,
    master: MasterKey,
    session: WebSession,
    cookie: str,
    code: str,
    ip: str | None,
) -> None:
    keys = _failure_keys(session.principal.name, ip)
    actor = session.principal.actor
    if _locked(conn, keys, config):
        audit.append(
            conn, actor=actor, action="user.totp", outcome="denied", details={"reason": "locked", "ip": ip}
        )
        raise LoginRefused(429, "locked", "too many failed attempts; try again later")
    row = get_user(conn, session.principal.name)
    if row is None or row["totp_secret_enc"] is None or not check_totp(master, row, code):
        count_failures(conn, keys, _login_window(config))
        audit.append(
            conn, actor=actor, action="user.totp", outcome="denied", details={"reason": "bad_code", "ip": ip}
        )
        raise LoginRefused(401, "bad_code", "wrong code")
    conn.execute(
        update(web_sessions).where(web_sessions.c.id_hash == hash_token(cookie)).values(pending_totp=False)
    )
    audit.append(conn, actor=actor, action="user.totp", outcome="ok", details={"ip": ip})


def _create(conn: Connection, row: dict[str, Any], *, pending_totp: bool) -> tuple[str, WebSession]:
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = utcnow()
    conn.execute(
        web_sessions.insert().values(
            id_hash=hash_token(cookie),
            user_id=row["id"],
            csrf_token=csrf,
            pending_totp=pending_totp,
            created_at=now,
            last_seen_at=now,
        )
    )
    principal = Principal("user", row["username"], row["id"], row["role"], row["email"], via="session")
    return cookie, WebSession(principal, csrf, pending_totp)


def load(conn: Connection, config: Config, cookie: str) -> WebSession | None:
    """The live session for a cookie, or None (unknown, idle too long, too old, user disabled)."""
    row = (
        conn.execute(
            select(web_sessions, users.c.username, users.c.role, users.c.email, users.c.disabled)
            .join(users, users.c.id == web_sessions.c.user_id)
            .where(web_sessions.c.id_hash == hash_token(cookie))
        )
        .mappings()
        .first()
    )
    if row is None or row["disabled"]:
        return None
    now = utcnow()
    last_seen, created = aware(row["last_seen_at"]), aware(row["created_at"])
    if now - last_seen > dt.timedelta(minutes=config.session_idle_minutes) or now - created > dt.timedelta(  # type: ignore[operator]
        hours=config.session_max_hours
    ):
        conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == row["id_hash"]))
        return None
    if now - last_seen > LAST_SEEN_GRANULARITY:  # type: ignore[operator]
        conn.execute(
            update(web_sessions).where(web_sessions.c.id_hash == row["id_hash"]).values(last_seen_at=now)
        )
    principal = Principal("user", row["username"], row["user_id"], row["role"], row["email"], via="session")
    return WebSession(principal, row["csrf_token"], row["pending_totp"])


def logout(conn: Connection, cookie: str) -> None:
    conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == hash_token(cookie)))


def csrf_ok(session: WebSession, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf_token, presented or "")
