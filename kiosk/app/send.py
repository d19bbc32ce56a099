"""Screen 5, review and send: choose destinations, tap Send (assemble_report + seal_and_queue + wake the
outbox worker, in kiosk.app.runtime), then a confirmation; the session is wiped once the report is queued.
A failed seal keeps everything, explains what to do, and offers Retry."""

from __future__ import annotations

from flask import Blueprint, redirect, request, session, url_for
from werkzeug.wrappers import Response

from kiosk.app import bodymap
from kiosk.app.common import current, needs, render, runtime
from kiosk.app.consent import consenter_labels, method_labels, purpose_labels
from kiosk.app.i18n import _
from kiosk.app.runtime import SendFailed
from kiosk.session import Session

bp = Blueprint("send", __name__)


def _destinations() -> list[dict[str, object]]:
    config = runtime().config
    out = []
    for dest in config.destination:
        emails = list(getattr(dest, "to", None) or getattr(dest, "recipients_email", None) or [])
        out.append({"name": dest.name, "type": dest.type, "emails": emails})
    return out


def _review(s: Session, **extra: object) -> str:
    config = runtime().config
    if not s.destinations:
        defaults = [n for n in config.ui.default_destinations if any(d.name == n for d in config.destination)]
        s.destinations = defaults or ([config.destination[0].name] if len(config.destination) == 1 else [])
    missing_site = [i for i, p in enumerate(s.photos, start=1) if p.body_site is None]
    return render(
        "review.html",
        s=s,
        destinations=_destinations(),
        describe=bodymap.describe,
        consenters=consenter_labels(),
        methods=method_labels(),
        purposes=purpose_labels(),
        missing_site=missing_site,
        **extra,
    )


@bp.get("/review")
@needs("consent")
def review(s: Session) -> str | Response:
    if not s.photos:
        return redirect(url_for("capture.index"))
    return _review(s)


@bp.post("/review/destination")
@needs("consent")
def toggle_destination(s: Session) -> Response:
    name = request.form.get("name", "")
    if any(d.name == name for d in runtime().config.destination):
        if name in s.destinations:
            s.destinations.remove(name)
        else:
            s.destinations.append(name)
    return redirect(url_for("send.review"))


@bp.post("/send")
@needs("consent")
def send(s: Session) -> str | Response:
    rt = runtime()
    if any(p.body_site is None for p in s.photos):
        return _review(s, error=_("Choose a body site for every photo (tap the photo)."))
    try:
        result = rt.send(s, list(s.destinations))
    except SendFailed as exc:
        s.last_error = exc.message
        return _review(s, error=exc.message, detail=exc.detail, retry=True)
    rt.sessions.end(s, "sent", report_id=result.report_id, destinations=result.destinations)
    return redirect(url_for("send.done"))


@bp.get("/done")
def done() -> str | Response:
    if current() is not None:
        return redirect(url_for("signin.index"))
    ended = runtime().sessions.ended(session.get("sid"))
    if ended is None or ended.reason != "sent":
        return redirect(url_for("signin.index"))
    return render("done.html", s=None, ended=ended)
