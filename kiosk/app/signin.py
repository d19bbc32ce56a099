"""Screen 1, staff sign-in: scan a badge (camera or keyboard-wedge scanner) or type staff number + PIN."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import Blueprint, jsonify, redirect, request, session, url_for
from werkzeug.wrappers import Response

from kiosk.app.common import begin, current, needs, render, runtime, step_url
from kiosk.app.i18n import _
from kiosk.config import StaffMember
from kiosk.report.model import Staff
from kiosk.scan.payload import Identity

bp = Blueprint("signin", __name__)
_hasher = PasswordHasher()


def verify_pin(pin_hash: str | None, pin: str) -> bool:
    if not pin_hash or not pin:
        return False
    try:
        return _hasher.verify(pin_hash, pin)
    except (VerificationError, InvalidHashError):
        return False


def staff_for_badge(identity: Identity | None, text: str) -> StaffMember | None:
    """The configured staff member whose badge matches the scanned payload or its staff id."""
    candidates = {text.strip()}
    if identity is not None and identity.kind == "staff":
        candidates.add(identity.fields.get("staff_id", ""))
    for member in runtime().config.staff:
        if member.badge and member.badge in candidates:
            return member
    return None


def sign_in(member: StaffMember, method: str) -> str:
    rt = runtime()
    new = rt.sessions.start(Staff(id=member.id, name=member.name, role=member.role))
    begin(new)
    rt.events.record("signed-in", actor=member.id, method=method)
    return url_for("patient.scan")


@bp.get("/")
def index() -> str | Response:
    s = current()
    if s is not None:
        return redirect(step_url(s))
    runtime().stage_mock_scene("signin")
    ended = request.args.get("ended")
    notice = {
        "idle": _("You were signed out after a period without activity. Nothing was sent."),
        "cancel": _("Cancelled. Nothing was sent and the photos were deleted."),
        "withdrawn": _("Consent withdrawn. Nothing was sent and the photos were deleted."),
        "signout": _("Signed out."),
        "1": _("Your session ended. Nothing was sent."),
    }.get(ended or "")
    return render(
        "signin.html",
        s=None,
        notice=notice,
        staff_configured=bool(runtime().config.staff),
        scan_seq=runtime().scanner.seq,
    )


@bp.post("/signin/pin")
def pin() -> str | Response:
    staff_id = request.form.get("staff_id", "").strip()
    pin_code = request.form.get("pin", "").strip()
    rt = runtime()
    member = next((m for m in rt.config.staff if m.id.lower() == staff_id.lower()), None)
    if member is None or not verify_pin(member.pin_hash, pin_code):
        rt.events.record("sign-in-refused", method="pin")
        return render(
            "signin.html",
            s=None,
            error=_("Staff number or PIN not recognised — try again."),
            staff_configured=bool(rt.config.staff),
            scan_seq=rt.scanner.seq,
        )
    return redirect(sign_in(member, "pin"))


@bp.get("/signin/scan")
def scan_poll() -> Response:
    """Polled by the sign-in screen: a badge in front of the camera signs its owner in."""
    rt = runtime()
    rt.scanner.want()
    after = request.args.get("after", type=int) or 0
    hit = rt.scanner.latest(after)
    if hit is None:
        return jsonify(seq=rt.scanner.seq, error=_camera_message())
    return jsonify(**_badge_outcome(hit.identity, hit.text, "badge-camera"), seq=hit.seq)


def _badge_outcome(identity: Identity | None, text: str, method: str) -> dict[str, str]:
    if identity is not None and identity.kind == "patient":
        return {"message": _("That looks like a patient wristband. Scan your staff badge, or use your PIN.")}
    member = staff_for_badge(identity, text)
    if member is None:
        runtime().events.record("sign-in-refused", method=method)
        return {"message": _("Badge not recognised — try again or use your staff number and PIN.")}
    return {"redirect": sign_in(member, method)}


def badge_from_wedge(identity: Identity | None, text: str) -> dict[str, str]:
    return _badge_outcome(identity, text, "badge-wedge")


def _camera_message() -> str | None:
    rt = runtime()
    if rt.camera is None:
        return _("Camera not connected — call IT. You can sign in with your PIN.")
    return None


@bp.post("/signout")
@needs("staff")
def signout(s) -> Response:  # type: ignore[no-untyped-def]
    runtime().sessions.end(s, "signed-out")
    session.clear()
    return redirect(url_for("signin.index", ended="signout"))


@bp.post("/cancel")
def cancel() -> Response:
    """Cancel is on every screen (after a confirm dialog): the one wipe, then back to the start."""
    s = current()
    if s is not None:
        runtime().sessions.end(s, "cancelled")
    session.pop("sid", None)
    return redirect(url_for("signin.index", ended="cancel"))
