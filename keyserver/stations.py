"""Stations: one-time enrollment codes, enrollment (a station token, returned once), disable, re-enroll.

A code is single-use and short-lived. A code bound to a station id re-enrolls that station (its old tokens
are revoked, a disabled station becomes active again); an unbound code enrolls a new station only. Failed
enrollments are rate-limited per client address and overall, with the login failure counters in the
database (enroll_throttled), so every instance sharing the database applies the same limits.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import secrets
from typing import Any

from sqlalchemy import Connection, select, update

from keyserver import audit, sessions
from keyserver.config import Config
from keyserver.db import aware, utcnow
from keyserver.models import api_tokens, enrollment_codes, stations
from keyserver.users import hash_token, new_token

STATION_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as SealedHeader.station_id


class EnrollmentError(ValueError):
    def __init__(self, message: str, reason: str, status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class EnrollmentThrottled(EnrollmentError):
    """Too many failed enrollments from this address (or from everywhere) in the current window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed enrollment attempts; try again in {retry_after} seconds", "throttled", 429
        )
        self.retry_after = retry_after


def enroll_limits(config: Config, ip: str | None) -> tuple[dict[str, int], dt.timedelta]:
    """Failure limits for enrollment, and their window: per client address and for all addresses.

    Codes have 80 bits and are short-lived, so the limits are defence in depth: they bound how fast anyone
    can try codes at all. The global limit also bounds a guesser spread over many addresses, at the price
    that such a flood pauses genuine enrollments too until the window ends (an admin sees it in the audit
    log as ``station.enroll`` denials with reason ``throttled``).
    """
    limits = {
        f"enroll-ip:{ip or 'unknown'}"[:300]: config.enroll_max_failures_per_address,
        "enroll:*": config.enroll_max_failures_total,
    }
    return limits, dt.timedelta(minutes=config.enroll_window_minutes)


def _normalize_code(code: str) -> str:
    return re.sub(r"[\s-]", "", code).upper()


def create_code(
    conn: Connection, *, actor: str, minutes: int, station_id: str | None = None
) -> tuple[str, dt.datetime]:
    if station_id is not None and not STATION_ID_RE.match(station_id):
        raise EnrollmentError("invalid station id", "invalid_station_id", 400)
    raw = base64.b32encode(secrets.token_bytes(10)).decode()  # 80 bits, 16 characters
    code = "-".join(raw[i : i + 4] for i in range(0, 16, 4))
    now = utcnow()
    expires = now + dt.timedelta(minutes=minutes)
    conn.execute(
        enrollment_codes.insert().values(
            code_hash=hash_token(_normalize_code(code)),
            station_id=station_id,
            created_by=actor,
            created_at=now,
            expires_at=expires,
        )
    )
    audit.append(
        conn,
        actor=actor,
        action="station.enroll_code",
        outcome="ok",
        details={"station_id": station_id, "expires_at": expires.isoformat()},
    )
    return code, expires


def enroll(conn: Connection, code: str, station_id: str, *, ip: str | None) -> str:
    """Consume the code and return a new station token. Raises EnrollmentError (caller audits it)."""
    if not STATION_ID_RE.match(station_id or ""):
        raise EnrollmentError("invalid station id", "invalid_station_id", 400)
    row = (
        conn.execute(
            select(enrollment_codes).where(enrollment_codes.c.code_hash == hash_token(_normalize_code(code)))
        )
        .mappings()
        .first()
    )
    if row is None:
        raise EnrollmentError("unknown enrollment code", "unknown_code")
    if row["used_at"] is not None:
        raise EnrollmentError("this enrollment code was already used", "code_reused")
    if aware(row["expires_at"]) <= utcnow():  # type: ignore[operator]
        raise EnrollmentError("this enrollment code has expired", "code_expired")
    if row["station_id"] is not None and row["station_id"] != station_id:
        raise EnrollmentError("this enrollment code is for another station", "code_station_mismatch")
    existing = conn.execute(select(stations).where(stations.c.station_id == station_id)).mappings().first()
    if existing is not None and row["station_id"] is None:
        raise EnrollmentError(
            "a station with this id is already enrolled; ask for a re-enrollment code", "station_exists", 409
        )
    now = utcnow()
    # Mark used with a guarded update: two concurrent enrollments with one code cannot both succeed.
    used = conn.execute(
        update(enrollment_codes)
        .where(enrollment_codes.c.id == row["id"], enrollment_codes.c.used_at.is_(None))
        .values(used_at=now, used_by=station_id)
    )
    if used.rowcount != 1:
        raise EnrollmentError("this enrollment code was already used", "code_reused")
    if existing is None:
        conn.execute(
            stations.insert().values(station_id=station_id, status="active", created_at=now, enrolled_at=now)
        )
    else:
        conn.execute(
            update(stations)
            .where(stations.c.station_id == station_id)
            .values(status="active", enrolled_at=now)
        )
        conn.execute(update(api_tokens).where(api_tokens.c.station_id == station_id).values(revoked=True))
    token = new_token("station")
    conn.execute(
        api_tokens.insert().values(
            token_hash=hash_token(token), kind="station", station_id=station_id, created_at=now, revoked=False
        )
    )
    audit.append(
        conn,
        actor=f"station:{station_id}",
        action="station.enroll",
        outcome="ok",
        details={"station_id": station_id, "reenrolled": existing is not None, "ip": ip},
    )
    return token


def enroll_throttled(
    conn: Connection, config: Config, code: str, station_id: str, *, ip: str | None, actor: str
) -> str | EnrollmentError:
    """enroll() behind the failure throttle; the token, or the refusal for the caller to raise.

    A refusal is returned rather than raised so that the caller's transaction commits the failure count
    and the audit record together (raising would roll both back). The throttle is checked before the
    code, so once it trips even a right code waits for the window (a guesser learns nothing).
    """
    limits, window = enroll_limits(config, ip)
    safe_id = station_id if STATION_ID_RE.match(station_id) else None
    until = sessions.throttled_until(conn, limits, window)
    if until is not None:
        refusal: EnrollmentError = EnrollmentThrottled(max(1, math.ceil((until - utcnow()).total_seconds())))
    else:
        try:
            with conn.begin_nested():  # a failed enrollment leaves no partial writes behind
                return enroll(conn, code, station_id, ip=ip)
        except EnrollmentError as exc:
            refusal = exc
        sessions.count_failures(conn, list(limits), window)
    audit.append(
        conn,
        actor=actor,
        action="station.enroll",
        outcome="denied",
        details={"ip": ip, "station_id": safe_id, "reason": refusal.reason},
    )
    return refusal


def list_stations(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(stations).order_by(stations.c.station_id)).mappings()
    return [
        {
            "station_id": r["station_id"],
            "status": r["status"],
            "created_at": aware(r["created_at"]).isoformat(),  # type: ignore[union-attr]
            "enrolled_at": aware(r["enrolled_at"]).isoformat() if r["enrolled_at"] else None,
        }
        for r in rows
    ]


def set_status(conn: Connection, station_id: str, status: str, *, actor: str) -> None:
    result = conn.execute(update(stations).where(stations.c.station_id == station_id).values(status=status))
    if result.rowcount == 0:
        raise EnrollmentError(f"no station {station_id}", "unknown_station", 404)
    audit.append(
        conn,
        actor=actor,
        action="station.disable" if status == "disabled" else "station.enable",
        outcome="ok",
        details={"station_id": station_id},
    )


def list_codes(conn: Connection) -> list[dict[str, Any]]:
    """Outstanding codes (never the codes themselves: only their hashes are stored)."""
    rows = conn.execute(
        select(enrollment_codes)
        .where(enrollment_codes.c.used_at.is_(None))
        .order_by(enrollment_codes.c.id.desc())
    ).mappings()
    now = utcnow()
    return [
        {
            "id": r["id"],
            "station_id": r["station_id"],
            "created_by": r["created_by"],
            "expires_at": aware(r["expires_at"]).isoformat(),  # type: ignore[union-attr]
        }
        for r in rows
        if aware(r["expires_at"]) > now  # type: ignore[operator]
    ]
