"""Helpers shared by the screens: the runtime, the current session, guards, rendering."""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from kiosk.app.runtime import StationRuntime
from kiosk.session import Session

F = TypeVar("F", bound=Callable[..., Any])
ADMIN_IDLE_SECONDS = 600.0


def runtime() -> StationRuntime:
    return current_app.extensions["station"]  # type: ignore[no-any-return]


def current() -> Session | None:
    """The active session named by the cookie's opaque id, or None."""
    return runtime().sessions.get(session.get("sid"))


def begin(new: Session) -> None:
    session.clear()
    session["sid"] = new.id


def step_url(s: Session) -> str:
    """Where an active session belongs now."""
    if s.patient is None:
        return url_for("patient.confirm") if s.pending is not None else url_for("patient.scan")
    if s.consent is None:
        return url_for("consent.who")
    return url_for("capture.index")


def needs(stage: str, *, touch: bool = True) -> Callable[[F], F]:
    """Guard a screen: 'staff' (signed in), 'patient' (confirmed), 'consent' (recorded).

    A request counts as activity (postpones the idle wipe) unless `touch=False`: polls made by an open page
    are not a person at the station.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            s = current()
            if s is None:
                if request.headers.get("HX-Request"):
                    return Response(status=204, headers={"HX-Redirect": url_for("signin.index")})
                return redirect(url_for("signin.index", ended="1" if session.get("sid") else None))
            ok = (
                stage == "staff"
                or (stage == "patient" and s.patient is not None)
                or (stage == "consent" and s.may_capture)
            )
            if not ok:
                if request.headers.get("HX-Request"):
                    return Response(status=204, headers={"HX-Redirect": step_url(s)})
                return redirect(step_url(s))
            if touch:
                s.touch()
            return view(s, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def render(template: str, **context: Any) -> str:
    s = context.pop("s", None) or current()
    rt = runtime()
    return render_template(
        f"station/{template}",
        s=s,
        ui=rt.config.ui,
        station_id=rt.config.station.id,
        idle_timeout=rt.config.ui.idle_timeout,
        idle_warning=rt.config.ui.idle_warning,
        **context,
    )


# --- admin: a separate short-lived sign-in, never mixed with the nurse's session ----------------------
def admin_tokens() -> dict[str, float]:
    return current_app.extensions["station_admin"]  # type: ignore[no-any-return]


def admin_begin() -> None:
    token = secrets.token_urlsafe(24)
    admin_tokens()[token] = time.monotonic()
    session["admin"] = token


def is_admin() -> bool:
    token = session.get("admin")
    tokens = admin_tokens()
    if not token or token not in tokens:
        return False
    if time.monotonic() - tokens[token] > ADMIN_IDLE_SECONDS:
        tokens.pop(token, None)
        return False
    tokens[token] = time.monotonic()
    return True


def admin_end() -> None:
    admin_tokens().pop(session.pop("admin", ""), None)


def needs_admin(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not is_admin():
            if request.headers.get("HX-Request"):
                return Response(status=204, headers={"HX-Redirect": url_for("admin.login")})
            return redirect(url_for("admin.login"))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
