"""JSON API under /v1 (documented in openapi.py, served at /v1/openapi.json)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, g, jsonify, request, send_file

from keyserver import audit, db, inbox, keks, reports, stations
from keyserver.app import client_ip, require, state
from keyserver.openapi import openapi_document
from keyserver.reports import Denied
from keyserver.users import Principal
from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import MEDIA_TYPE

api = Blueprint("api", __name__, url_prefix="/v1")


def json_body() -> Any:
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise Denied(400, "malformed_json", "the request body is not valid JSON")
    return body


def _audit_denial(action: str, denied: Denied, *, report_id: str | None = None, **details: Any) -> None:
    actor = g.principal.actor if g.principal else "anonymous"
    reports.record_denial(
        state().engine, actor, action, denied, report_id=report_id, details={"ip": client_ip(), **details}
    )


@api.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(state().config.public_base_url))


@api.get("/keys")
def public_keys() -> Response:
    st = state()
    with db.read(st.engine) as conn:
        keys = keks.public_keys(conn, st.config.public_base_url)
    return jsonify(current=keys[0].version if keys else None, keys=[k.to_dict() for k in keys])


@api.get("/me")
def me() -> Response:
    p: Principal | None = g.principal
    if p is None:
        raise Denied(401, "unauthenticated", "sign in or present a valid token")
    if p.role == "disabled-station":
        raise Denied(403, "station_disabled", "this station is disabled")
    return jsonify(kind=p.kind, name=p.name, role=p.role, via=p.via)


@api.post("/stations/enroll")
def enroll() -> tuple[Response, int]:
    st = state()
    body = json_body()
    code, station_id = (body.get("code"), body.get("station_id")) if isinstance(body, dict) else (None, None)
    if not isinstance(code, str) or not isinstance(station_id, str):
        raise Denied(400, "malformed_request", "expected {code, station_id}")
    actor = g.principal.actor if g.principal else "anonymous"
    with db.write(st.engine) as conn:
        # A refusal comes back as a value: its failure count and audit record commit with this transaction.
        outcome = stations.enroll_throttled(conn, st.config, code, station_id, ip=client_ip(), actor=actor)
        keys = keks.public_keys(conn, st.config.public_base_url) if isinstance(outcome, str) else []
    if isinstance(outcome, stations.EnrollmentThrottled):
        response = jsonify(error=outcome.reason, message=str(outcome))
        response.headers["Retry-After"] = str(outcome.retry_after)
        return response, 429
    if isinstance(outcome, stations.EnrollmentError):
        raise Denied(outcome.status, outcome.reason, str(outcome))
    token = outcome
    return jsonify(
        station_id=station_id,
        token=token,
        key_server_url=st.config.public_base_url,
        public_keys=[k.to_dict() for k in keys],
    ), 201


def _station_call(action: str) -> Principal:
    """Stations only; a missing, bad or disabled credential is refused and audited."""
    p: Principal | None = g.principal
    if p is None:
        denied = Denied(401, "unauthenticated", "present the station token")
    elif p.kind != "station":
        denied = Denied(403, "forbidden", "only enrolled stations may do this")
    elif p.role == "disabled-station":
        denied = Denied(403, "station_disabled", "this station is disabled")
    else:
        return p
    _audit_denial(action, denied)
    raise denied


@api.post("/reports")
def register_report() -> tuple[Response, int]:
    station = _station_call("report.register")
    body = json_body()
    header = reports.parse_header(body.get("header") if isinstance(body, dict) else None)
    st = state()
    try:
        with db.write(st.engine) as conn:
            created = reports.register(conn, station, header, ip=client_ip())
    except Denied as denied:
        _audit_denial("report.register", denied, report_id=header.report_id)
        raise
    return jsonify(report_id=header.report_id, registered=True, new=created), 201 if created else 200


@api.get("/reports/<report_id>")
@require(roles=("admin", "auditor"))
def report_info(report_id: str) -> Response:
    with db.read(state().engine) as conn:
        info = reports.report_info(conn, report_id)
    if info is None:
        raise Denied(404, "unknown_report", "no such report")
    return jsonify(info)


def _set_revoked(report_id: str, revoked: bool) -> Response:
    body = request.get_json(silent=True, force=True) or {}
    reason = body.get("reason") if isinstance(body, dict) else None
    with db.write(state().engine) as conn:
        reports.set_revoked(conn, report_id, revoked, actor=g.principal.actor, reason=str(reason or ""))
    return jsonify(report_id=report_id, revoked=revoked)


@api.post("/reports/<report_id>/revoke")
@require(roles=("admin",))
def revoke(report_id: str) -> Response:
    return _set_revoked(report_id, True)


@api.post("/reports/<report_id>/restore")
@require(roles=("admin",))
def restore(report_id: str) -> Response:
    return _set_revoked(report_id, False)


def _release(delivery: bool) -> Response:
    st = state()
    action = "key.delivery" if delivery else "key.release"
    p: Principal | None = g.principal
    if p is None and not g.deferred_token:
        denied = Denied(401, "unauthenticated", "sign in or present a valid token")
        _audit_denial(action, denied)
        raise denied
    body = json_body()
    release = reports.unwrap(
        st.engine, st.keys, p, body, delivery=delivery, ip=client_ip(), token=g.deferred_token
    )
    return release_answer(release.report_id, release.kek_version, release.data_key, release.audit_seq)


def release_answer(report_id: str, kek_version: int, data_key: bytes, audit_seq: int) -> Response:
    """The answer to a key release. The key server's hottest answer, a fixed shape of strings and integers:
    serialized by orjson, in a fraction of jsonify's CPU (bench/keyserver_steps.py), to the same JSON."""
    answer = {
        "audit_seq": audit_seq,
        "data_key": envelope.b64encode(data_key),
        "kek_version": kek_version,
        "report_id": report_id,
    }
    return Response(orjson.dumps(answer), mimetype="application/json")


@api.post("/unwrap")
def unwrap() -> Response:
    return _release(delivery=False)


@api.post("/delivery/unwrap")
def delivery_unwrap() -> Response:
    return _release(delivery=True)


@api.post("/inbox")
def inbox_upload() -> tuple[Response, int]:
    station = _station_call("inbox.upload")
    st = state()
    inbox.maybe_purge(st.engine, st.config.effective_inbox_dir)
    try:
        status, receipt = inbox.upload(
            st.engine,
            st.config.effective_inbox_dir,
            station,
            request.stream,
            max_bytes=st.config.max_upload_mb * 1024 * 1024,
            retention_days=st.config.inbox_retention_days,
            ip=client_ip(),
        )
    except Denied as denied:
        _audit_denial("inbox.upload", denied)
        raise
    return jsonify(receipt), status


@api.get("/inbox")
@require(roles=("clinician", "admin"))
def inbox_list() -> Response:
    with db.read(state().engine) as conn:
        return jsonify(reports=reports.inbox_for(conn, g.principal))


@api.get("/inbox/<report_id>/file")
@require(roles=("clinician", "admin"))
def inbox_file(report_id: str) -> Response:
    st = state()
    handle = None
    try:
        # No audit record, no data: the download is recorded in this transaction, which commits before
        # the first byte is sent; if the record cannot be written the request fails and nothing is served.
        with db.write(st.engine) as conn:
            allowed = reports.may_open(conn, g.principal, report_id)
            if allowed:
                handle = inbox.open_for_download(
                    conn, st.config.effective_inbox_dir, report_id, actor=g.principal.actor, ip=client_ip()
                )
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    if not allowed:
        denied = Denied(403, "not_recipient", "you are not a recipient of this report")
        _audit_denial("inbox.download", denied, report_id=reports._safe_id(report_id))
        raise denied
    if handle is None:
        raise Denied(404, "not_in_inbox", "this report is not (or no longer) in the inbox")
    return send_file(handle, mimetype=MEDIA_TYPE, as_attachment=True, download_name=f"{report_id}.cpseal")


@api.get("/audit")
@require(roles=("admin", "auditor"))
def audit_query() -> Response:
    args = request.args
    try:
        after, limit = int(args.get("after_seq", 0)), min(int(args.get("limit", 200)), 1000)
    except ValueError as exc:
        raise Denied(400, "malformed_request", "after_seq and limit are integers") from exc
    with db.read(state().engine) as conn:
        records = audit.query(
            conn,
            report_id=args.get("report_id"),
            actor=args.get("actor"),
            action=args.get("action"),
            after_seq=after,
            limit=limit,
        )
    return jsonify(records=records)


@api.get("/audit/export")
@require(roles=("admin", "auditor"))
def audit_export() -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise Denied(400, "malformed_request", "format is json or csv")
    with db.read(state().engine) as conn:
        records = list(audit.iter_all(conn))
    body = audit.to_csv(records) if fmt == "csv" else audit.to_json(records)
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f"attachment; filename=audit.{fmt}"
    return response


@api.get("/audit/verify")
@require(roles=("admin", "auditor"))
def audit_verify() -> Response:
    with db.read(state().engine) as conn:
        result = audit.verify(conn)
    return jsonify(ok=result.ok, records=result.records, head_hash=result.head_hash, problems=result.problems)


@api.get("/stations")
@require(roles=("admin",))
def station_list() -> Response:
    with db.read(state().engine) as conn:
        return jsonify(stations=stations.list_stations(conn))


@api.post("/stations/<station_id>/disable")
@require(roles=("admin",))
def station_disable(station_id: str) -> Response:
    try:
        with db.write(state().engine) as conn:
            stations.set_status(conn, station_id, "disabled", actor=g.principal.actor)
    except stations.EnrollmentError as exc:
        raise Denied(exc.status, exc.reason, str(exc)) from exc
    return jsonify(station_id=station_id, status="disabled")


@api.post("/enrollment-codes")
@require(roles=("admin",))
def enrollment_code() -> tuple[Response, int]:
    st = state()
    body = request.get_json(silent=True, force=True) or {}
    station_id = body.get("station_id") if isinstance(body, dict) else None
    try:
        with db.write(st.engine) as conn:
            code, expires = stations.create_code(
                conn,
                actor=g.principal.actor,
                minutes=st.config.enrollment_code_minutes,
                station_id=station_id,
            )
    except stations.EnrollmentError as exc:
        raise Denied(exc.status, exc.reason, str(exc)) from exc
    return jsonify(code=code, station_id=station_id, expires_at=expires.isoformat()), 201
