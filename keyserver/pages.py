"""HTML pages: login (+TOTP), inbox, report (decrypted in the browser), open-a-file, admin, audit
(and station trails).

Pages hold no plaintext: the report page fetches the sealed file and the data key, and decrypts with
WebCrypto in the browser. Forms carry the session's CSRF token; the login form a double-submit cookie.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, redirect, render_template, request, url_for

from keyserver import audit, db, inbox, reports, sessions, station_trails, stations, users
from keyserver.app import PRE_CSRF_COOKIE, SESSION_COOKIE, client_ip, state
from keyserver.reports import Denied

pages = Blueprint("pages", __name__)


def _render(template: str, status: int = 200, **context: Any) -> Response:
    session = g.session
    context.setdefault("csrf_token", session.csrf_token if session else "")
    context.setdefault("principal", g.principal)
    return Response(render_template(f"keyserver/{template}", **context), status=status, mimetype="text/html")


def _need(*roles: str) -> Response | None:
    """Redirect anonymous visitors to the login page; 403 for the wrong role."""
    if g.principal is None or g.principal.kind != "user":
        return redirect(url_for("pages.login", next=request.path))  # type: ignore[return-value]
    if roles and g.principal.role not in roles:
        raise Denied(403, "forbidden", "your role does not allow this page")
    return None


def _set_session_cookie(response: Response, cookie: str) -> None:
    cfg = state().config
    response.set_cookie(
        SESSION_COOKIE, cookie, httponly=True, samesite="Strict", secure=cfg.session_cookie_secure, path="/"
    )


@pages.get("/")
def index() -> Response:
    if g.principal is None:
        return redirect(url_for("pages.login"))  # type: ignore[return-value]
    target = "pages.audit_page" if g.principal.role == "auditor" else "pages.inbox_page"
    return redirect(url_for(target))  # type: ignore[return-value]


@pages.get("/login")
def login() -> Response:
    token = request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = _render("login.html", csrf_token=token, next=request.args.get("next", ""))
    response.set_cookie(
        PRE_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=state().config.session_cookie_secure
    )
    return response


def _safe_next(value: str | None) -> str:
    # Only local paths: never an open redirect.
    return value if value and value.startswith("/") and not value.startswith("//") else url_for("pages.index")


@pages.post("/login")
def login_post() -> Response:
    pre = request.cookies.get(PRE_CSRF_COOKIE, "")
    if not pre or not hmac.compare_digest(pre, request.form.get("csrf_token", "")):
        raise Denied(403, "csrf", "the login form expired; reload the page")
    st = state()
    refused: sessions.LoginRefused | None = None
    with db.write(st.engine) as conn:
        # Caught inside the transaction: a refusal must still commit its failure count and audit record.
        try:
            cookie, session = sessions.login(
                conn,
                st.config,
                username=request.form.get("username", ""),
                password=request.form.get("password", ""),
                ip=client_ip(),
            )
        except sessions.LoginRefused as exc:
            refused = exc
    if refused is not None:
        return _render(
            "login.html",
            status=refused.status,
            csrf_token=pre,
            error=refused.message,
            next=request.form.get("next", ""),
        )
    target = (
        url_for("pages.totp", next=request.form.get("next"))
        if session.pending_totp
        else _safe_next(request.form.get("next"))
    )
    response = redirect(target)
    _set_session_cookie(response, cookie)  # type: ignore[arg-type]
    response.delete_cookie(PRE_CSRF_COOKIE)
    return response  # type: ignore[return-value]


@pages.get("/login/totp")
def totp() -> Response:
    if g.session is None:
        return redirect(url_for("pages.login"))  # type: ignore[return-value]
    return _render("totp.html", next=request.args.get("next", ""))


@pages.post("/login/totp")
def totp_post() -> Response:
    if g.session is None:
        return redirect(url_for("pages.login"))  # type: ignore[return-value]
    st = state()
    refused: sessions.LoginRefused | None = None
    with db.write(st.engine) as conn:
        try:
            sessions.verify_totp(
                conn, st.config, st.master, g.session, g.cookie, request.form.get("code", ""), client_ip()
            )
        except sessions.LoginRefused as exc:
            refused = exc  # committed with its audit record and failure count
    if refused is not None:
        return _render(
            "totp.html", status=refused.status, error=refused.message, next=request.form.get("next", "")
        )
    return redirect(_safe_next(request.form.get("next")))  # type: ignore[return-value]


@pages.post("/logout")
def logout() -> Response:
    if g.cookie:
        with db.write(state().engine) as conn:
            sessions.logout(conn, g.cookie)
    response = redirect(url_for("pages.login"))
    response.delete_cookie(SESSION_COOKIE)
    return response  # type: ignore[return-value]


@pages.get("/inbox")
def inbox_page() -> Response:
    if (redirect_to := _need("clinician", "admin")) is not None:
        return redirect_to
    with db.read(state().engine) as conn:
        rows = reports.inbox_for(conn, g.principal)
    return _render("inbox.html", reports=rows)


@pages.get("/reports/<report_id>")
def report_page(report_id: str) -> Response:
    if (redirect_to := _need("clinician", "admin")) is not None:
        return redirect_to
    st = state()
    with db.read(st.engine) as conn:
        if not reports.may_open(conn, g.principal, report_id):
            raise Denied(403, "not_recipient", "you are not a recipient of this report")
        info = reports.report_info(conn, report_id)
        available = inbox.file_for(conn, st.config.effective_inbox_dir, report_id) is not None
    return _render("report.html", report=info, available=available, report_id=report_id)


@pages.get("/open")
def open_page() -> Response:
    if (redirect_to := _need("clinician", "admin")) is not None:
        return redirect_to
    return _render("open.html")


def _admin_context(conn: Any) -> dict[str, Any]:
    locked = sessions.locked_usernames(conn, state().config)
    return {
        "stations": stations.list_stations(conn),
        "codes": stations.list_codes(conn),
        "users": [{**u, "locked": u["username"] in locked} for u in users.list_users(conn)],
        "grants": users.list_grants(conn),
    }


@pages.get("/admin")
def admin_page() -> Response:
    if (redirect_to := _need("admin")) is not None:
        return redirect_to
    with db.read(state().engine) as conn:
        context = _admin_context(conn)
    return _render("admin.html", message=None, **context)


AdminAction = Callable[[Any, str], tuple[dict[str, Any] | None, str]]


def _admin_action(action: AdminAction) -> Response:
    """Run one admin form action in a write transaction, then show the admin page with its message.

    The action returns (extra context shown once, e.g. a new enrollment code, or None; message).
    """
    if (redirect_to := _need("admin")) is not None:
        return redirect_to
    st = state()
    extra: dict[str, Any] | None = None
    message, status = None, 200
    try:
        with db.write(st.engine) as conn:
            extra, message = action(conn, g.principal.actor)
    except (users.UserError, stations.EnrollmentError, Denied, ValueError) as exc:
        message, status = str(exc), 400
    with db.read(st.engine) as conn:
        context = _admin_context(conn)
    return _render("admin.html", status=status, message=message, **(extra or {}), **context)


@pages.post("/admin/enrollment-codes")
def admin_code() -> Response:
    station_id = request.form.get("station_id", "").strip() or None
    minutes = state().config.enrollment_code_minutes

    def action(conn: Any, actor: str) -> tuple[dict[str, Any], str]:
        code, expires = stations.create_code(conn, actor=actor, minutes=minutes, station_id=station_id)
        new_code = {"code": code, "expires_at": expires.isoformat(), "station_id": station_id}
        return {"new_code": new_code}, "code created"

    return _admin_action(action)


@pages.post("/admin/stations/<station_id>/disable")
def admin_station_disable(station_id: str) -> Response:
    def action(conn: Any, actor: str) -> tuple[None, str]:
        stations.set_status(conn, station_id, "disabled", actor=actor)
        return None, f"station {station_id} disabled"

    return _admin_action(action)


@pages.post("/admin/users")
def admin_user_add() -> Response:
    form = request.form

    def action(conn: Any, actor: str) -> tuple[None, str]:
        groups = [g.strip() for g in form.get("groups", "").split(",") if g.strip()]
        users.add_user(
            conn,
            username=form.get("username", ""),
            password=form.get("password", ""),
            role=form.get("role", ""),
            email=form.get("email") or None,
            actor=actor,
            group_names=groups,
        )
        return None, f"user {form.get('username', '')} added"

    return _admin_action(action)


@pages.post("/admin/users/<username>/disable")
def admin_user_disable(username: str) -> Response:
    def action(conn: Any, actor: str) -> tuple[None, str]:
        if actor == f"user:{username}":
            # Ending one's own session from the page leaves, with no other admin, only the CLI to get back.
            raise users.UserError("you cannot disable your own account")
        users.set_disabled(conn, username, True, actor=actor)
        return None, f"user {username} disabled"

    return _admin_action(action)


@pages.post("/admin/users/<username>/enable")
def admin_user_enable(username: str) -> Response:
    def action(conn: Any, actor: str) -> tuple[None, str]:
        users.set_disabled(conn, username, False, actor=actor)
        return None, f"user {username} enabled (create new API tokens if needed)"

    return _admin_action(action)


@pages.post("/admin/users/<username>/unlock")
def admin_user_unlock(username: str) -> Response:
    def action(conn: Any, actor: str) -> tuple[None, str]:
        sessions.unlock(conn, username, actor=actor)
        return None, f"login lockout of {username} cleared"

    return _admin_action(action)


@pages.post("/admin/users/<username>/totp")
def admin_user_totp(username: str) -> Response:
    remove = request.form.get("action") == "remove"

    def action(conn: Any, actor: str) -> tuple[dict[str, Any] | None, str]:
        if remove:
            users.clear_totp(conn, username, actor=actor)
            return None, f"TOTP turned off for {username}"
        uri = users.set_totp(conn, state().master, username, actor=actor)
        return {"new_totp": {"username": username, "uri": uri}}, f"new TOTP secret for {username}"

    return _admin_action(action)


@pages.post("/admin/grants")
def admin_grant_add() -> Response:
    form = request.form

    def action(conn: Any, actor: str) -> tuple[None, str]:
        subject_type, subject = form.get("subject_type", ""), form.get("subject", "")
        recipient = form.get("recipient", "")
        users.add_grant(conn, subject_type=subject_type, subject=subject, recipient=recipient, actor=actor)
        return None, f"{subject_type} {subject.strip()} may open reports for {recipient.strip().lower()}"

    return _admin_action(action)


@pages.post("/admin/grants/<int:grant_id>/remove")
def admin_grant_remove(grant_id: int) -> Response:
    def action(conn: Any, actor: str) -> tuple[None, str]:
        removed = users.remove_grant(conn, grant_id, actor=actor)
        return None, f"grant removed: {removed['subject_type']} {removed['subject']} → {removed['recipient']}"

    return _admin_action(action)


@pages.post("/admin/reports")
def admin_report() -> Response:
    report_id = request.form.get("report_id", "").strip()
    revoke = request.form.get("action") != "restore"

    def action(conn: Any, actor: str) -> tuple[None, str]:
        reports.set_revoked(conn, report_id, revoke, actor=actor, reason=request.form.get("reason"))
        return None, f"report {report_id} {'revoked' if revoke else 'restored'}"

    return _admin_action(action)


@pages.get("/audit")
def audit_page() -> Response:
    if (redirect_to := _need("admin", "auditor")) is not None:
        return redirect_to
    args = request.args
    with db.read(state().engine) as conn:
        records = audit.query(
            conn,
            report_id=args.get("report_id") or None,
            actor=args.get("actor") or None,
            action=args.get("action") or None,
            limit=200,
            newest_first=True,
        )
        result = audit.verify(conn)
    return _render("audit.html", records=records, verify=result, filters=args)


@pages.get("/audit/stations")
def station_audit_page() -> Response:
    """Read-only: every station's shipped chains; a chosen chain's newest records and the station's verify."""
    if (redirect_to := _need("admin", "auditor")) is not None:
        return redirect_to
    station_id, chain = request.args.get("station") or None, request.args.get("chain") or None
    with db.read(state().engine) as conn:
        context = station_trails.page_context(conn, station_id, chain)
    if context is None:
        raise Denied(404, "not_found", "no such station or chain")
    return _render("station_audit.html", **context)
