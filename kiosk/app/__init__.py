"""The station's touchscreen app: `create_app()` and one blueprint per screen.

    sign-in -> patient (scan or type, then confirm a second identifier) -> consent -> capture -> review/send

Served by waitress (threads) in the one process that owns the camera (`kiosk serve`). Pages are rendered on
the server; the browser holds only an opaque session id. Every response says `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, redirect, request, url_for
from werkzeug.wrappers import Response

from kiosk.app import i18n
from kiosk.app.runtime import StationRuntime
from kiosk.config import Config

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def create_app(
    config: Config,
    *,
    runtime: StationRuntime | None = None,
    camera: Any = None,
    pin_factory: Any = None,
    start: bool = True,
) -> Flask:
    """Build the app around a `StationRuntime` (camera, GPIO, outbox worker), started unless `start=False`."""
    app = Flask(
        __name__,
        template_folder=str(WEB_DIR / "templates"),
        static_folder=str(WEB_DIR / "static"),
        static_url_path="/static",
    )
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # sessions live in memory: a restart ends them anyway
        SESSION_COOKIE_NAME="station",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,  # a signature PNG is the largest upload
        SEND_FILE_MAX_AGE_DEFAULT=0,
    )
    i18n.setup(config.ui.language)
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=i18n._, ngettext=i18n.template_ngettext, newstyle=True
    )
    app.jinja_env.globals["_"] = i18n._
    from kiosk.app.bodymap import describe

    app.jinja_env.globals["describe"] = describe

    rt = runtime or StationRuntime(config, camera=camera, pin_factory=pin_factory)
    app.extensions["station"] = rt
    app.extensions["station_admin"] = {}
    if start and runtime is None:
        rt.start()

    from kiosk.app import admin, api, capture, consent, patient, send, signin

    for module in (signin, patient, consent, capture, send, admin, api):
        app.register_blueprint(module.bp)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store, max-age=0"
        response.headers["Pragma"] = "no-cache"
        response.headers["Expires"] = "0"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.pop("ETag", None)
        response.headers.pop("Last-Modified", None)
        return response

    @app.errorhandler(404)
    def _not_found(_: Exception) -> Any:
        return redirect(url_for("signin.index"))

    @app.errorhandler(500)
    def _error(exc: Exception) -> Any:
        # An unexpected error must not leave patient data behind: end the session (the one wipe) and say so.
        from kiosk.app.common import current, render

        s = current()
        if s is not None:
            rt.sessions.end(s, "error")
        log.error("unexpected error on %s %s", request.method, request.path)
        return render("error.html", s=None, kind="unexpected"), 500

    return app
