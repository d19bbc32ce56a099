"""Users, groups, grants and API tokens.

Passwords are argon2id (argon2-cffi defaults). API tokens are 256-bit random strings shown once; only their
SHA-256 is stored, which is safe for high-entropy secrets and cheap enough for every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, bindparam, delete, select, update

from keyserver import audit
from keyserver.db import utcnow
from keyserver.masterkey import MasterKey
from keyserver.models import api_tokens, grants, groups, stations, user_groups, users, web_sessions

ROLES = ("admin", "clinician", "auditor")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD = 12
TOKEN_PREFIX = {"user": "ksu_", "station": "kss_"}

_hasher = PasswordHasher()
_dummy_hash: str | None = None


def _dummy() -> str:
    """Verified against when the username is unknown, so both paths cost the same (no enumeration by time)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_hex(16))
    return _dummy_hash


class UserError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (via session or token) or a station (via its token)."""

    kind: str  # user | station
    name: str  # username or station id
    user_id: int | None = None
    role: str | None = None
    email: str | None = None
    via: str = "token"  # token | session

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: str) -> str:
    return TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)


def add_user(
    conn: Connection,
    *,
    username: str,
    password: str,
    role: str,
    actor: str,
    email: str | None = None,
    display_name: str | None = None,
    group_names: list[str] | None = None,
) -> int:
    username = username.strip().lower()
    if not USERNAME_RE.match(username):
        raise UserError("usernames are lower-case letters, digits, '.', '_' or '-' (max 64)")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords have at least {MIN_PASSWORD} characters")
    if conn.execute(select(users.c.id).where(users.c.username == username)).first():
        raise UserError(f"user {username} already exists")
    email = email.strip().lower() if email else None
    if email and conn.execute(select(users.c.id).where(users.c.email == email)).first():
        raise UserError(f"email {email} is already in use")
    user_id = conn.execute(
        users.insert().values(
            username=username,
            email=email,
            display_name=display_name,
            role=role,
            password_hash=_hasher.hash(password),
            disabled=False,
            created_at=utcnow(),
        )
    ).inserted_primary_key[0]
    for name in group_names or []:
        add_to_group(conn, user_id, name)
    audit.append(
        conn,
        actor=actor,
        action="user.add",
        outcome="ok",
        details={"user": username, "role": role, "groups": sorted(group_names or [])},
    )
    return int(user_id)


def add_to_group(conn: Connection, user_id: int, name: str) -> None:
    group_id = conn.execute(select(groups.c.id).where(groups.c.name == name)).scalar()
    if group_id is None:
        group_id = conn.execute(groups.insert().values(name=name)).inserted_primary_key[0]
    conn.execute(user_groups.insert().values(user_id=user_id, group_id=group_id))


def add_grant(conn: Connection, *, subject_type: str, subject: str, recipient: str, actor: str) -> None:
    if subject_type not in ("role", "group"):
        raise UserError("grants are for a role or a group")
    subject, recipient = subject.strip(), recipient.strip().lower()
    if subject_type == "role" and subject not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not subject or len(subject) > 64 or not recipient or len(recipient) > 254:
        raise UserError("a grant needs a subject (max 64 characters) and a recipient (max 254)")
    existing = select(grants.c.id).where(
        grants.c.subject_type == subject_type, grants.c.subject == subject, grants.c.recipient == recipient
    )
    if conn.execute(existing).first():
        raise UserError(f"{subject_type} {subject} may already open reports for {recipient}")
    conn.execute(grants.insert().values(subject_type=subject_type, subject=subject, recipient=recipient))
    audit.append(
        conn,
        actor=actor,
        action="grant.add",
        outcome="ok",
        details={"subject_type": subject_type, "subject": subject, "recipient": recipient},
    )


def list_grants(conn: Connection) -> list[dict[str, Any]]:
    stmt = select(grants).order_by(grants.c.subject_type, grants.c.subject, grants.c.recipient)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def remove_grant(conn: Connection, grant_id: int, *, actor: str) -> dict[str, Any]:
    row = conn.execute(select(grants).where(grants.c.id == grant_id)).mappings().first()
    if row is None:
        raise UserError(f"no grant {grant_id}")
    conn.execute(delete(grants).where(grants.c.id == grant_id))
    details = {"subject_type": row["subject_type"], "subject": row["subject"], "recipient": row["recipient"]}
    audit.append(conn, actor=actor, action="grant.remove", outcome="ok", details=details)
    return details


def get_user(conn: Connection, username: str) -> dict[str, Any] | None:
    row = conn.execute(select(users).where(users.c.username == username.strip().lower())).mappings().first()
    return dict(row) if row else None


def list_users(conn: Connection) -> list[dict[str, Any]]:
    memberships: dict[int, list[str]] = {}
    for r in conn.execute(
        select(user_groups.c.user_id, groups.c.name)
        .join(groups, groups.c.id == user_groups.c.group_id)
        .order_by(groups.c.name)
    ):
        memberships.setdefault(r.user_id, []).append(r.name)
    rows = conn.execute(select(users).order_by(users.c.username)).mappings()
    return [
        {
            "username": r["username"],
            "email": r["email"],
            "role": r["role"],
            "disabled": r["disabled"],
            "totp": r["totp_secret_enc"] is not None,
            "groups": memberships.get(r["id"], []),
        }
        for r in rows
    ]


def user_groups_of(conn: Connection, user_id: int) -> list[str]:
    rows = conn.execute(
        select(groups.c.name)
        .join(user_groups, user_groups.c.group_id == groups.c.id)
        .where(user_groups.c.user_id == user_id)
    )
    return [r.name for r in rows]


def set_disabled(conn: Connection, username: str, disabled: bool, *, actor: str) -> None:
    """Disable or re-enable a user. Re-enabling restores sign-in only: the API tokens revoked at
    disable stay revoked (create new ones), and a login lockout is cleared separately (sessions.unlock)."""
    username = username.strip().lower()
    result = conn.execute(update(users).where(users.c.username == username).values(disabled=disabled))
    if result.rowcount == 0:
        raise UserError(f"no user {username}")
    if disabled:
        # A disabled user keeps no way in: tokens revoked, sessions ended.
        uid = conn.execute(select(users.c.id).where(users.c.username == username)).scalar()
        conn.execute(update(api_tokens).where(api_tokens.c.user_id == uid).values(revoked=True))
        conn.execute(delete(web_sessions).where(web_sessions.c.user_id == uid))
    audit.append(
        conn,
        actor=actor,
        action="user.disable" if disabled else "user.enable",
        outcome="ok",
        details={"user": username},
    )


def check_password(row: dict[str, Any] | None, password: str) -> bool:
    try:
        return _hasher.verify(row["password_hash"] if row else _dummy(), password) and row is not None
    except (VerificationError, InvalidHashError):
        return False


def set_totp(conn: Connection, master: MasterKey, username: str, *, actor: str) -> str:
    """Enable TOTP; returns the provisioning URI (shown once, e.g. as text for an authenticator app)."""
    row = get_user(conn, username)
    if row is None:
        raise UserError(f"no user {username}")
    secret = pyotp.random_base32()
    enc = master.encrypt("totp", secret.encode(), f"totp:{row['id']}".encode())
    conn.execute(update(users).where(users.c.id == row["id"]).values(totp_secret_enc=enc))
    audit.append(conn, actor=actor, action="user.totp", outcome="ok", details={"user": username})
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name="Clinical Photo Key Server")


def clear_totp(conn: Connection, username: str, *, actor: str) -> None:
    """Turn TOTP off (e.g. a lost phone); the user signs in with the password until it is set again."""
    username = username.strip().lower()
    result = conn.execute(update(users).where(users.c.username == username).values(totp_secret_enc=None))
    if result.rowcount == 0:
        raise UserError(f"no user {username}")
    audit.append(conn, actor=actor, action="user.totp_remove", outcome="ok", details={"user": username})


def check_totp(master: MasterKey, row: dict[str, Any], code: str) -> bool:
    secret = master.decrypt("totp", row["totp_secret_enc"], f"totp:{row['id']}".encode()).decode()
    return pyotp.TOTP(secret).verify(code.strip(), valid_window=1)


def create_token(conn: Connection, username: str, *, actor: str, name: str | None = None) -> str:
    row = get_user(conn, username)
    if row is None or row["disabled"]:
        raise UserError(f"no active user {username}")
    token = new_token("user")
    conn.execute(
        api_tokens.insert().values(
            token_hash=hash_token(token),
            kind="user",
            user_id=row["id"],
            name=name,
            created_at=utcnow(),
            revoked=False,
        )
    )
    audit.append(conn, actor=actor, action="token.create", outcome="ok", details={"user": username})
    return token


# A token's caller (principal_from_row reads these columns), with the user's and the station's state.
TOKEN_CALLER_COLUMNS = (
    api_tokens.c.kind,
    api_tokens.c.station_id,
    users.c.id,
    users.c.username,
    users.c.role,
    users.c.email,
    users.c.disabled,
    stations.c.status,
)
TOKEN_CALLER_FROM = api_tokens.outerjoin(users, users.c.id == api_tokens.c.user_id).outerjoin(
    stations, stations.c.station_id == api_tokens.c.station_id
)
# Built once: constructing a statement costs more CPU than running it (this runs on every API request).
TOKEN_QUERY = (
    select(*TOKEN_CALLER_COLUMNS)
    .select_from(TOKEN_CALLER_FROM)
    .where(api_tokens.c.token_hash == bindparam("token_hash"), api_tokens.c.revoked.is_(False))
)


def principal_for_token(conn: Connection, token: str) -> Principal | None:
    """The active user or station behind a bearer token, or None (unknown, revoked, disabled)."""
    row = conn.execute(TOKEN_QUERY, {"token_hash": hash_token(token)}).mappings().first()
    return principal_from_row(row) if row is not None else None


def principal_from_row(row: Any) -> Principal | None:
    """The principal of a TOKEN_QUERY row (None for a disabled user)."""
    if row["kind"] == "user":
        if row["disabled"]:
            return None
        return Principal("user", row["username"], row["id"], row["role"], row["email"])
    if row["status"] != "active":
        return Principal("station", row["station_id"], role="disabled-station")
    return Principal("station", row["station_id"])
