"""Reports: registration, key release (recipient unwrap, station delivery), revocation.

Key release order, modelled on Vault transit / KMS: validate the request and the header, then — in one
write transaction holding the audit chain lock (release.py, shared by concurrent releases) — read the
caller's token, the KEK, the policy rows and the report's registration and revocation, decide (the HPKE
unwrap with the KEK also proves the header is the one the station sealed: its canonical bytes are the HPKE
``info``), append the audit record and commit. Only after the commit does the caller see the key. Every
denial is audited too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, or_, select, update

from keyserver import audit, release
from keyserver.db import utcnow, write
from keyserver.keks import PrivateKeyCache
from keyserver.models import grants, inbox_files, report_recipients, reports
from keyserver.users import Principal, hash_token, principal_from_row, user_groups_of
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


def _named_or_granted(state: release.BatchState, principal: Principal, recipients: set[str]) -> bool:
    """A user not named in the header: through a group, or a grant to their role or a group (the same rule
    as identities() and _granted(), on the general path with their queries, on the fast path with the rows
    the batch read for it)."""
    if state.conn is not None:
        names, group_names = identities(state.conn, principal)
        return bool(names & recipients) or _granted(state.conn, principal, group_names, recipients)
    user_id = principal.user_id
    if state.groups is None or state.grants is None or (user_id is not None and user_id not in state.groups):
        raise release.PolicyRowsNeeded(user_id, recipients)
    group_names = state.groups[user_id] if user_id is not None else []
    names = {principal.name.lower(), *(g.lower() for g in group_names)}
    if principal.email:
        names.add(principal.email.lower())
    if names & recipients:
        return True
    targets, groups = {*recipients, "*"}, set(group_names or [""])
    return any(
        recipient in targets
        and ((kind == "role" and subject == principal.role) or (kind == "group" and subject in groups))
        for kind, subject, recipient in state.grants
    )


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

    The caller is either a known ``principal`` (browser session) or an API ``token`` not yet looked up.
    What needs no database is checked here, by the request thread; the rest — the token, the KEK, the
    policy, the registration and revocation — is decided in the release batch's transaction after the
    audit chain lock (decide_in_batch), where the record of either outcome is appended (release.py).
    """
    action = "key.delivery" if delivery else "key.release"
    details: dict[str, Any] = {"ip": ip, "via": principal.via if principal else "token"}
    try:
        item = prepare_release(
            cache, principal, body, action=action, delivery=delivery, details=details, token=token
        )
    except Denied as denied:
        header_value = body.get("header") if isinstance(body, dict) else None
        report_id = header_value.get("report_id") if isinstance(header_value, dict) else None
        actor = principal.actor if principal else "anonymous"
        record_denial(engine, actor, action, denied, report_id=_safe_id(report_id), details=details)
        raise
    # Group commit (release.py): this returns only once the audit record is committed.
    release.batcher(engine, decide_in_batch).commit(item)
    if item.denied is not None:
        raise item.denied
    assert item.data_key is not None
    return Release(item.data_key, item.header.report_id, item.header.kek_version or 0, item.seq)


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


def _unwrapped(wrapped: bytes, canonical_header: bytes, private: Any) -> bytes | None:
    try:
        return envelope.unwrap_canonical(wrapped, canonical_header, private)
    except envelope.UnwrapError:
        return None


def prepare_release(
    cache: PrivateKeyCache,
    principal: Principal | None,
    body: Any,
    *,
    action: str,
    delivery: bool,
    details: dict[str, Any],
    token: str | None,
) -> release.Pending:
    """The request thread's part: every check that needs no database (in the order the caller sees the
    refusals), and the HPKE unwrap with the cached private key of the header's KEK version. That early
    unwrap is only a computation: its result is used by the batch, after the KEK row has been read and
    found to be the same ciphertext, and only once every check of the decision has passed."""
    if principal is not None:
        _check_caller(principal, delivery)
    if not isinstance(body, dict) or not isinstance(body.get("wrapped_key"), str):
        raise Denied(400, "malformed_request", "expected a JSON object with header and wrapped_key")
    header = parse_header(body.get("header"))
    details["kek_version"] = header.kek_version
    details["station_id"] = header.station_id
    try:
        wrapped = envelope.b64decode(body["wrapped_key"])
    except ValueError as exc:
        raise Denied(400, "malformed_request", "wrapped_key is not base64url") from exc
    canonical = envelope.canonical_json(header.as_dict())
    item = release.Pending(
        action=action,
        delivery=delivery,
        header=header,
        header_canonical=canonical,
        header_sha=hashlib.sha256(canonical).hexdigest(),
        wrapped=wrapped,
        details=details,
        principal=principal,
        token_hash=hash_token(token or "") if principal is None else None,
        keys=cache,
    )
    cached = cache.peek(header.kek_version)
    if cached is not None:
        item.early = (cached[0], _unwrapped(wrapped, canonical, cached[1]))
    return item


def decide_in_batch(item: release.Pending, state: release.BatchState) -> None:
    """Decide one release from what its batch read after taking the audit chain lock (release.py).

    Sets the outcome on ``item``: ``released`` with the data key, or ``denied`` with the Denied to raise;
    the batch records either in its transaction. On the fast path (``state.conn`` None) it raises
    release.PolicyRowsNeeded when the caller is not named and the batch has not read the group and grant
    rows yet, and release.GeneralPathNeeded when the report must be registered first.
    """
    header, details = item.header, dict(item.details)
    item.audit_details, item.denied, item.data_key = details, None, None
    principal: Principal | None = item.principal
    item.actor = principal.actor if principal else "anonymous"
    try:
        if principal is None:
            row = state.tokens.get(item.token_hash or "")
            principal = principal_from_row(row) if row is not None else None
            if principal is None:
                details["bad_token"] = True
                raise Denied(401, "unauthenticated", "sign in or present a valid token")
            item.actor = principal.actor
            _check_caller(principal, item.delivery)
        kek = state.keks.get(header.kek_version) if header.kek_version is not None else None
        if kek is None:
            raise Denied(404, "unknown_kek", f"no key version {header.kek_version} on this key server")
        status, enc = kek
        if status == "destroyed" or enc is None:
            raise Denied(410, "kek_destroyed", "the key for this report was destroyed; it cannot be opened")
        digest, private = item.keys.entry(header.kek_version, enc)
        if item.delivery:
            if header.station_id != principal.name:
                raise Denied(403, "not_sealing_station", "a station may only fetch keys of reports it sealed")
        else:
            recipients = {r.strip().lower() for r in header.recipients}
            direct = {principal.name.lower(), (principal.email or "").lower()} & recipients
            if not direct and not _named_or_granted(state, principal, recipients):
                raise Denied(403, "not_recipient", "you are not a recipient of this report")
        if item.early is not None and item.early[0] == digest:
            data_key = item.early[1]
        else:
            data_key = _unwrapped(item.wrapped, item.header_canonical, private)
        if data_key is None:
            raise Denied(400, "tampered", "the header or wrapped key was altered; refusing")
        registered = state.reports.get(header.report_id)
        if registered is not None and registered[0] != item.header_sha:
            raise Denied(409, "header_conflict", "this header differs from the one the station registered")
        if registered is not None and registered[1]:
            raise Denied(403, "revoked", "this report has been revoked")
        if registered is None:
            # Sealed offline and not registered yet: the header is authentic (it unwrapped), record it.
            if state.conn is None:
                raise release.GeneralPathNeeded
            _insert_report(state.conn, header)
            state.reports[header.report_id] = (item.header_sha, False)
            details["first_seen"] = True
    except Denied as denied:
        details["reason"] = denied.reason
        item.outcome, item.denied = "denied", denied
        return
    item.outcome, item.data_key = "released", data_key


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
