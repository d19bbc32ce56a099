"""Screen 5, review and send: choose destinations, tap Send (assemble_report + seal_and_queue + wake the
outbox worker, in kiosk.app.runtime), then a confirmation; the session is wiped once the report is queued.
A failed seal keeps everything, explains what to do, and offers Retry.

An email destination with ``ask_recipients`` shows, once chosen, its address book as big checkboxes and,
with ``allowed_domains``, a field for a name typed on the on-screen keyboard plus one *Add @domain* button
per allowed domain: picking the domain rather than typing it keeps a typo from mailing another
organisation. The choices live in the session (`Session.recipients`, wiped with it) and are queued with
the deliveries; Send is refused, keeping the session, while such a destination has no recipient."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, request, session, url_for
from werkzeug.wrappers import Response

from kiosk.app import bodymap
from kiosk.app.common import current, needs, render, runtime
from kiosk.app.consent import consenter_labels, method_labels, purpose_labels
from kiosk.app.i18n import _
from kiosk.app.runtime import SendFailed
from kiosk.destinations.email import MAX_CHOSEN, EmailConfig, RecipientProblem
from kiosk.session import RecipientChoice, Session

bp = Blueprint("send", __name__)


def _asking(name: str) -> EmailConfig | None:
    """The email destination ``name`` if the nurse picks its recipients."""
    dest = next((d for d in runtime().config.destination if d.name == name), None)
    return dest if isinstance(dest, EmailConfig) and dest.ask_recipients else None


def _choice(s: Session, dest: EmailConfig) -> RecipientChoice:
    if dest.name not in s.recipients:
        s.recipients[dest.name] = RecipientChoice(chosen=list(dest.to))  # `to` = ticked at the start
    return s.recipients[dest.name]


def _same(address: str, among: list[str]) -> str | None:
    return next((a for a in among if a.lower() == address.lower()), None)


def _destinations(s: Session) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for index, dest in enumerate(runtime().config.destination):
        item: dict[str, object] = {"name": dest.name, "type": dest.type, "emails": [], "index": index}
        if isinstance(dest, EmailConfig) and dest.ask_recipients:
            choice = _choice(s, dest)
            offered = [(e.name, e.address) for e in dest.address_book] + [(a, a) for a in choice.typed]
            item["entries"] = [
                {"label": label, "address": address, "checked": _same(address, choice.chosen) is not None}
                for label, address in offered
            ]
            item["domains"] = dest.allowed_domains
        elif isinstance(dest, EmailConfig):
            item["emails"] = list(dest.to)
        out.append(item)
    return out


def _recipient_message(problem: RecipientProblem, dest: EmailConfig, typed: str = "") -> str:
    """What the nurse reads, in the station's language (the exception's own text is English, for IT)."""
    if problem.reason == "none":
        return _("Tick who gets the email from “%(name)s”, or untick “%(name)s”.", name=dest.name)
    if problem.reason == "too-many":
        return _("At most %(n)s email recipients per report.", n=MAX_CHOSEN)
    if problem.reason == "invalid" and not typed.strip():
        return _("Type the first part of the address (before the @), then tap Add.")
    if problem.reason == "invalid":
        return _("“%(text)s” is not an email address. Check the spelling.", text=typed)
    if problem.reason == "domain" and dest.allowed_domains:
        domains = " " + _("or") + " "
        return _(
            "Email can only go to addresses ending in %(domains)s.",
            domains=domains.join(f"@{d}" for d in dest.allowed_domains),
        )
    return _("That address is not on the clinic's list for “%(name)s” — call IT.", name=dest.name)


def _review(s: Session, **extra: Any) -> str:
    config = runtime().config
    if not s.destinations:
        defaults = [n for n in config.ui.default_destinations if any(d.name == n for d in config.destination)]
        s.destinations = defaults or ([config.destination[0].name] if len(config.destination) == 1 else [])
    missing_site = [i for i, p in enumerate(s.photos, start=1) if p.body_site is None]
    return render(
        "review.html",
        s=s,
        destinations=_destinations(s),
        describe=bodymap.describe,
        consenters=consenter_labels(),
        methods=method_labels(),
        purposes=purpose_labels(),
        missing_site=missing_site,
        **({"typed": {}} | extra),
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


@bp.post("/review/recipient")
@needs("consent")
def toggle_recipient(s: Session) -> Response:
    dest = _asking(request.form.get("destination", ""))
    if dest is not None:
        choice = _choice(s, dest)
        offered = _same(
            request.form.get("address", ""), [e.address for e in dest.address_book] + choice.typed
        )
        ticked = _same(offered or "", choice.chosen)
        if ticked is not None:
            choice.chosen.remove(ticked)
        elif offered is not None:
            choice.chosen.append(offered)
    return redirect(url_for("send.review"))


@bp.post("/review/recipient/add")
@needs("consent")
def add_recipient(s: Session) -> str | Response:
    dest = _asking(request.form.get("destination", ""))
    if dest is None:
        return redirect(url_for("send.review"))
    text = request.form.get("local", "")[:254]
    typed = {dest.name: text}
    try:
        address = dest.typed_address(text, request.form.get("domain"))
    except RecipientProblem as exc:
        return _review(s, error=_recipient_message(exc, dest, text), typed=typed)
    choice = _choice(s, dest)
    known = _same(address, [e.address for e in dest.address_book] + choice.typed)
    if _same(address, choice.chosen) is None:
        if len(choice.chosen) >= MAX_CHOSEN:
            return _review(s, error=_recipient_message(RecipientProblem("too-many", ""), dest), typed=typed)
        choice.chosen.append(known or address)
    if known is None:
        choice.typed.append(address)
    return redirect(url_for("send.review"))


@bp.post("/send")
@needs("consent")
def send(s: Session) -> str | Response:
    rt = runtime()
    if any(p.body_site is None for p in s.photos):
        return _review(s, error=_("Choose a body site for every photo (tap the photo)."))
    params: dict[str, dict[str, Any]] = {}
    for name in s.destinations:
        dest = _asking(name)
        if dest is None:
            continue
        try:  # refused here, in the nurse's words, before anything is sealed; the session is kept
            params[name] = dest.delivery_params({"to": _choice(s, dest).chosen}) or {}
        except RecipientProblem as exc:
            return _review(s, error=_recipient_message(exc, dest))
    try:
        result = rt.send(s, list(s.destinations), params)
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
