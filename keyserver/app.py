"""The Flask application: configuration, who is calling, CSRF, security headers and error handling.

Every error becomes a clean JSON body under /v1 (an HTML page elsewhere); an unexpected exception is logged
server-side and answered with a generic 500, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

import orjson
from flask import Flask, Response, g, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from keyserver import db, health, sessions
from keyserver.config import Config
from keyserver.keks import PrivateKeyCache
from keyserver.masterkey import MasterKey, load_master_key
from keyserver.reports import Denied
from keyserver.users import Principal, principal_for_token

log = logging.getLogger("keyserver")
SESSION_COOKIE = "ks_session"
PRE_CSRF_COOKIE = "ks_login_csrf"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
DEFERRED_TOKEN_ENDPOINTS = {"api.unwrap", "api.delivery_unwrap"}


@dataclass
class ServerState:
    config: Config
    engine: Engine
    master: MasterKey
    keys: PrivateKeyCache


class RequestJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with request bodies parsed by orjson: a key release reads a JSON body of about 1 KB on
    every request, and orjson parses it in a fraction of the standard module's time. It is also stricter:
    NaN, Infinity and invalid UTF-8 are malformed JSON (400), not values."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def state() -> ServerState:
    from flask import current_app

    return current_app.extensions["keyserver"]  # type: ignore[no-any-return]


def create_app(config: Config, *, engine: Engine | None = None) -> Flask:
    web = config.web_dir
    app = Flask(
        "keyserver",
        template_folder=str(web / "templates"),
        static_folder=str(web / "static"),
        static_url_path="/static",
    )
    app.json = RequestJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_mb * 1024 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = 64 * 1024
    engine = engine or db.engine_for(config)
    if config.is_sqlite:
        db.upgrade(engine)  # embedded default: zero config, the schema follows the code
    elif not db.is_current(engine):
        raise RuntimeError("the database schema is not current: run `keyserver db upgrade`")
    master = load_master_key(config)
    app.extensions["keyserver"] = ServerState(config, engine, master, PrivateKeyCache(master))
    if config.trusted_proxy_hops:
        hops = config.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    from keyserver.api import api
    from keyserver.pages import pages
    from keyserver.station_audit import station_audit_api

    app.register_blueprint(api)
    app.register_blueprint(pages)
    app.register_blueprint(station_audit_api)
    app.before_request(_identify)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Denied, _denied)
    app.register_error_handler(Exception, _internal_error)

    @app.get("/healthz")
    def healthz() -> Response:
        # No database, no auth: the "no-op on the same stack" baseline of bench/keyserver.py.
        return jsonify(status="ok")

    readiness = health.ReadinessCache()

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        # For monitoring: can this server release keys (keyserver/health.py)? 503 when a check fails.
        st = state()
        body, status = health.readiness_body(readiness.results(st.config, st.engine, st.master))
        return jsonify(body), status

    return app


def client_ip() -> str | None:
    return request.remote_addr


def _identify() -> Response | None:
    """Set g.principal (None if anonymous), g.session, and enforce CSRF for cookie sessions."""
    g.principal, g.session, g.cookie, g.deferred_token = None, None, None, None
    if request.path.startswith("/static/") or request.path in ("/healthz", "/readyz"):
        return None
    st = state()
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        if request.endpoint in DEFERRED_TOKEN_ENDPOINTS:
            # Key release looks the token up in its batch's transaction, after the audit chain lock, with the
            # key and the report (reports.unwrap, release.py).
            g.deferred_token = auth[7:].strip()
            return None
        with db.read(st.engine) as conn:
            g.principal = principal_for_token(conn, auth[7:].strip())
        g.bad_token = g.principal is None
        return None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        with db.write(st.engine) as conn:
            session = sessions.load(conn, st.config, cookie)
        if session is not None:
            g.session, g.cookie = session, cookie
            if not session.pending_totp:
                g.principal = session.principal
            # /login has its own double-submit token (the visitor may hold an old or half-done session).
            if request.method in UNSAFE and request.path != "/login":
                presented = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
                if not sessions.csrf_ok(session, presented):
                    raise Denied(403, "csrf", "missing or wrong CSRF token; reload the page")
    return None


def require(*, kind: str = "user", roles: tuple[str, ...] | None = None) -> Callable[..., Any]:
    """Endpoint guard: 401 without credentials, 403 for the wrong kind of caller or role."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal: Principal | None = g.principal
            if principal is None:
                raise Denied(401, "unauthenticated", "sign in or present a valid token")
            if principal.kind != kind or principal.role == "disabled-station":
                raise Denied(403, "forbidden", "not allowed for this kind of account")
            if roles is not None and principal.role not in roles:
                raise Denied(403, "forbidden", "your role does not allow this")
            return view(*args, **kwargs)

        return wrapper

    return decorator


def _security_headers(response: Response) -> Response:
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-src 'self' blob:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _wants_json() -> bool:
    return request.path.startswith("/v1") or request.path in ("/healthz", "/readyz")


def error_response(status: int, reason: str, message: str) -> Response:
    if _wants_json():
        response = jsonify(error=reason, message=message)
    else:
        response = Response(
            render_template("keyserver/error.html", status=status, message=message), mimetype="text/html"
        )
    response.status_code = status
    return response


def _denied(exc: Denied) -> Response:
    return error_response(exc.status, exc.reason, exc.message)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    reason = (exc.name or "error").lower().replace(" ", "_")
    messages = {413: "the request body is too large", 404: "not found", 405: "method not allowed"}
    return error_response(status, reason, messages.get(status, exc.description or exc.name or "error"))


def _internal_error(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(
        500, "internal_error", "internal error; the administrator can find details in the log"
    )
