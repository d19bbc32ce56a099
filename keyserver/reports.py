"""Reports: registration, key release (recipient unwrap, station delivery), revocation.

Key release order, modelled on Vault transit / KMS: validate the header, unwrap with the KEK (which also
proves the header is the one the station sealed: its canonical bytes are the HPKE ``info``), decide, then —
in one write transaction holding the audit chain lock — re-read the revocation state, append the audit
record and commit. Only after the commit does the caller see the key. Every denial is audited too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, bindparam, or_, select, update

from keyserver import audit, release
from keyserver.db import DriverStatement, driver_connection, psycopg_engine, read, utcnow, write
from keyserver.keks import PrivateKeyCache
from keyserver.models import grants, inbox_files, keks, report_recipients, reports
from keyserver.users import TOKEN_QUERY, Principal, hash_token, principal_from_row, user_groups_of
from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import SealedHeader


class Denied(Exception):
    """A refused request; ``reason`` is a stable machine code, also written to the audit log."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Release:
    data_key: bytes
    report_id: str
    kek_version: int
    audit_seq: int


# Hot-path statements, built once (building a statement costs more CPU than executing it).
# One round trip for everything a release decision needs about the key and the report:
_DECIDE_COLUMNS = (
    select(keks.c.status).where(keks.c.version == bindparam("version")).scalar_subquery().label("kek_status"),
    select(keks.c.private_key_enc)
    .where(keks.c.version == bindparam("version"))
    .scalar_subquery()
    .label("enc"),
    select(reports.c.header_sha256)
    .where(reports.c.report_id == bindparam("report_id"))
    .scalar_subquery()
    .label("registered"),
)
_DECIDE = select(*_DECIDE_COLUMNS)
# The same plus the caller's token (API calls): credentials, key and report in a single round trip.
_DECIDE_WITH_TOKEN = TOKEN_QUERY.add_columns(*_DECIDE_COLUMNS)
_DECIDE_PG = DriverStatement(_DECIDE)
_DECIDE_WITH_TOKEN_PG = DriverStatement(_DECIDE_WITH_TOKEN)


def _decision_row(
    engine: Engine, conn: Connection, statement: Any, on_driver: DriverStatement, params: dict[str, Any]
) -> dict[str, Any] | None:
    """The one row of a decision query (PostgreSQL: straight on psycopg, a prepared statement)."""
    if psycopg_engine(engine):
        cursor = driver_connection(conn).execute(on_driver.sql(engine), params, prepare=True)
        row = cursor.fetchone()
        return None if row is None else dict(zip([c.name for c in cursor.description], row, strict=True))
    found = conn.execute(statement, params).first()
    return None if found is None else dict(found._mapping)


def parse_header(value: Any) -> SealedHeader:
    try:
        header = SealedHeader.model_validate(value)
    except ValidationError as exc:
        raise Denied(400, "invalid_header", f"invalid report header: {exc.errors()[0]['msg']}") from exc
    if header.encryption != "envelope":
        raise Denied(
            400, "not_envelope", "this report is passphrase-sealed; the key server holds no key for it"
        )
    return header


def header_sha256(header: SealedHeader) -> str:
    return hashlib.sha256(envelope.canonical_json(header.as_dict())).hexdigest()


def _insert_report(conn: Connection, header: SealedHeader) -> None:
    conn.execute(
        reports.insert().values(
            report_id=header.report_id,
            station_id=header.station_id,
            created_at=header.created_at,
            registered_at=utcnow(),
            kek_version=header.kek_version,
            header=header.as_dict(),
            header_sha256=header_sha256(header),
        )
    )
    recipients = sorted({r.strip().lower() for r in header.recipients if r.strip()})
    if recipients:
        conn.execute(
            report_recipients.insert(), [{"report_id": header.report_id, "recipient": r} for r in recipients]
        )


def register(conn: Connection, station: Principal, header: SealedHeader, *, ip: str | None) -> bool:
    """Record a station's report header (idempotent). True if new. Caller holds a write transaction."""
    if header.station_id != station.name:
        raise Denied(403, "station_mismatch", "the header names another station")
    existing = conn.execute(
        select(reports.c.header_sha256).where(reports.c.report_id == header.report_id)
    ).scalar()
    if existing is not None:
        if existing != header_sha256(header):
            raise Denied(409, "header_conflict", "a different header is registered under this report id")
        return False
    _insert_report(conn, header)
    audit.append(
        conn,
        actor=station.actor,
        action="report.register",
        outcome="ok",
        report_id=header.report_id,
        details={
            "station_id": header.station_id,
            "created_at": header.created_at,
            "recipients": sorted(header.recipients),
            "kek_version": header.kek_version,
            "ip": ip,
        },
    )
    return True


def identities(conn: Connection, principal: Principal) -> tuple[set[str], list[str]]:
    """The recipient names a user answers to (username, email, groups), and their groups."""
    group_names = user_groups_of(conn, principal.user_id) if principal.user_id else []
    names = {principal.name.lower(), *(g.lower() for g in group_names)}
    if principal.email:
        names.add(principal.email.lower())
    return names, group_names


def _granted(conn: Connection, principal: Principal, group_names: list[str], recipients: set[str]) -> bool:
    subject = or_(
        (grants.c.subject_type == "role") & (grants.c.subject == principal.role),
        (grants.c.subject_type == "group") & grants.c.subject.in_(group_names or [""]),
    )
    target = grants.c.recipient.in_([*recipients, "*"])
    return conn.execute(select(grants.c.id).where(subject, target).limit(1)).first() is not None


def unwrap(
    engine: Engine,
    cache: PrivateKeyCache,
    principal: Principal | None,
    body: Any,
    *,
    delivery: bool,
    ip: str | None,
    token: str | None = None,
) -> Release:
    """Release a data key or raise Denied; both outcomes are audited before this returns.

    The caller is either a known ``principal`` (browser session) or an API ``token`` not yet looked up:
    then the lookup shares the decision's query.
    """
    action = "key.delivery" if delivery else "key.release"
    header_value = body.get("header") if isinstance(body, dict) else None
    report_id = header_value.get("report_id") if isinstance(header_value, dict) else None
    details: dict[str, Any] = {"ip": ip, "via": principal.via if principal else "token"}
    caller = [principal]  # filled in by _decide when it resolves the token
    try:
        header, data_key = _decide(
            engine, cache, caller, body, delivery=delivery, details=details, token=token
        )
    except Denied as denied:
        actor = caller[0].actor if caller[0] else "anonymous"
        record_denial(engine, actor, action, denied, report_id=_safe_id(report_id), details=details)
        raise
    actor = caller[0].actor  # type: ignore[union-attr]
    # Group commit (release.py): this returns only once the audit record is committed.
    item = release.batcher(engine, _insert_report).commit(release.Pending(actor, action, header, details))
    if item.revoked:
        raise Denied(403, "revoked", "this report has been revoked")
    return Release(data_key, header.report_id, header.kek_version or 0, item.seq)


def _safe_id(value: Any) -> str | None:
    # Only a well-formed id goes into the audit record's report_id column.
    return value if isinstance(value, str) and len(value) == 36 and value.count("-") == 4 else None


def _check_caller(principal: Principal, delivery: bool) -> None:
    if principal.kind == "station" and principal.role == "disabled-station":
        raise Denied(403, "station_disabled", "this station is disabled")
    if delivery != (principal.kind == "station"):
        raise Denied(403, "wrong_principal", "stations use delivery unwrap; users use unwrap")
    if principal.role == "auditor":
        raise Denied(403, "role_forbidden", "auditors cannot open reports")


def _decide(
    engine: Engine,
    cache: PrivateKeyCache,
    caller: list[Principal | None],
    body: Any,
    *,
    delivery: bool,
    details: dict[str, Any],
    token: str | None,
) -> tuple[SealedHeader, bytes]:
    if caller[0] is not None:
        _check_caller(caller[0], delivery)
    if not isinstance(body, dict) or not isinstance(body.get("wrapped_key"), str):
        raise Denied(400, "malformed_request", "expected a JSON object with header and wrapped_key")
    header = parse_header(body.get("header"))
    details["kek_version"] = header.kek_version
    details["station_id"] = header.station_id
    try:
        wrapped = envelope.b64decode(body["wrapped_key"])
    except ValueError as exc:
        raise Denied(400, "malformed_request", "wrapped_key is not base64url") from exc
    params = {"version": header.kek_version, "report_id": header.report_id}
    with read(engine) as conn:
        if caller[0] is None:
            params["token_hash"] = hash_token(token or "")
            row = _decision_row(engine, conn, _DECIDE_WITH_TOKEN, _DECIDE_WITH_TOKEN_PG, params)
            caller[0] = principal_from_row(row) if row is not None else None
            if caller[0] is None:
                details["bad_token"] = True
                raise Denied(401, "unauthenticated", "sign in or present a valid token")
            _check_caller(caller[0], delivery)
        else:
            row = _decision_row(engine, conn, _DECIDE, _DECIDE_PG, params)
        assert row is not None  # a select of scalar subqueries only always has one row
        principal = caller[0]
        registered = row["registered"]
        if row["kek_status"] is None:
            raise Denied(404, "unknown_kek", f"no key version {header.kek_version} on this key server")
        if row["kek_status"] == "destroyed" or row["enc"] is None:
            raise Denied(410, "kek_destroyed", "the key for this report was destroyed; it cannot be opened")
        private = cache.get(header.kek_version, row["enc"])
        if delivery:
            if header.station_id != principal.name:
                raise Denied(403, "not_sealing_station", "a station may only fetch keys of reports it sealed")
        else:
            recipients = {r.strip().lower() for r in header.recipients}
            direct = {principal.name.lower(), (principal.email or "").lower()} & recipients
            if not direct:  # groups and grants only when the user is not named: saves queries on the hot path
                names, group_names = identities(conn, principal)
                if not (names & recipients) and not _granted(conn, principal, group_names, recipients):
                    raise Denied(403, "not_recipient", "you are not a recipient of this report")
    try:
        data_key = envelope.unwrap(wrapped, header.as_dict(), private)
    except envelope.UnwrapError as exc:
        raise Denied(400, "tampered", "the header or wrapped key was altered; refusing") from exc
    if registered is not None and registered != header_sha256(header):
        raise Denied(409, "header_conflict", "this header differs from the one the station registered")
    return header, data_key


def record_denial(
    engine: Engine, actor: str, action: str, denied: Denied, *, report_id: str | None, details: dict[str, Any]
) -> None:
    with write(engine) as conn:
        audit.append(
            conn,
            actor=actor,
            action=action,
            outcome="denied",
            report_id=report_id,
            details={**details, "reason": denied.reason},
        )


def set_revoked(conn: Connection, report_id: str, revoked: bool, *, actor: str, reason: str | None) -> None:
    values: dict[str, Any] = (
        {"revoked_at": utcnow(), "revoked_by": actor, "revoked_reason": (reason or "")[:256]}
        if revoked
        else {"revoked_at": None, "revoked_by": None, "revoked_reason": None}
    )
    head = audit.lock(conn)  # serialize with key releases, so none slips past a revocation
    if conn.execute(update(reports).where(reports.c.report_id == report_id).values(**values)).rowcount == 0:
        raise Denied(404, "unknown_report", "no such report")
    audit.append(
        conn,
        actor=actor,
        action="report.revoke" if revoked else "report.restore",
        outcome="ok",
        report_id=report_id,
        details={"reason": reason or ""},
        head=head,
    )


def report_info(conn: Connection, report_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(reports).where(reports.c.report_id == report_id)).mappings().first()
    if row is None:
        return None
    return {
        "report_id": row["report_id"],
        "station_id": row["station_id"],
        "created_at": row["created_at"],
        "kek_version": row["kek_version"],
        "recipients": row["header"].get("recipients", []),
        "revoked": row["revoked_at"] is not None,
    }


def may_open(conn: Connection, principal: Principal, report_id: str) -> bool:
    """Whether the policy lets this user open the report (listing and file download; unwrap re-checks)."""
    if principal.kind != "user" or principal.role == "auditor":
        return False
    names, group_names = identities(conn, principal)
    recipients = {
        r.recipient
        for r in conn.execute(
            select(report_recipients.c.recipient).where(report_recipients.c.report_id == report_id)
        )
    }
    return bool(names & recipients) or _granted(conn, principal, group_names, recipients)


def inbox_for(conn: Connection, principal: Principal, limit: int = 500) -> list[dict[str, Any]]:
    """Inbox files of reports this user may open, newest first."""
    if principal.kind != "user" or principal.role == "auditor":
        return []
    names, group_names = identities(conn, principal)
    granted = [
        r.recipient
        for r in conn.execute(
            select(grants.c.recipient).where(
                or_(
                    (grants.c.subject_type == "role") & (grants.c.subject == principal.role),
                    (grants.c.subject_type == "group") & grants.c.subject.in_(group_names or [""]),
                )
            )
        )
    ]
    stmt = (
        select(reports, inbox_files.c.size, inbox_files.c.uploaded_at, inbox_files.c.expires_at)
        .join(inbox_files, inbox_files.c.report_id == reports.c.report_id)
        .where(inbox_files.c.expires_at > utcnow())
        .order_by(inbox_files.c.uploaded_at.desc())
        .limit(limit)
    )
    if "*" not in granted:
        mine = select(report_recipients.c.report_id).where(
            report_recipients.c.recipient.in_([*names, *granted])
        )
        stmt = stmt.where(reports.c.report_id.in_(mine))
    return [
        {
            "report_id": r["report_id"],
            "station_id": r["station_id"],
            "created_at": r["created_at"],
            "recipients": r["header"].get("recipients", []),
            "size": r["size"],
            "revoked": r["revoked_at"] is not None,
        }
        for r in conn.execute(stmt).mappings()
    ]
