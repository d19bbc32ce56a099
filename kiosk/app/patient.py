"""Screen 2, patient: scan the wristband (live preview, keyboard-wedge scanner) or type the number, then
confirm a second identifier (name or date of birth). No photo can be taken before this is done.

A FHIR Patient lookup for typed numbers is not built (optional in the brief): the second identifier is
confirmed from the wristband payload or typed by the nurse.
"""

from __future__ import annotations

import re
from datetime import date

from flask import Blueprint, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response

from kiosk.app.common import needs, render, runtime
from kiosk.app.i18n import _
from kiosk.scan.payload import Identity, gs1_mod10_valid, nhs_number_valid
from kiosk.session import PendingPatient, Session

bp = Blueprint("patient", __name__)
TYPED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9 /-]{0,39}")


def pending_from(identity: Identity, source: str, barcode_format: str | None = None) -> PendingPatient:
    fields = identity.fields
    return PendingPatient(
        mrn=fields["mrn"],
        source=source,  # type: ignore[arg-type]
        issuer=fields.get("issuer"),
        name=fields.get("name"),
        birth_date=fields.get("dob"),
        barcode_format=barcode_format,
    )


def outcome(s: Session, identity: Identity | None, source: str, barcode_format: str | None) -> dict[str, str]:
    """What a scanned payload does on the patient screen: a redirect to confirm, or a message."""
    if identity is None:
        return {"message": _("Wristband not recognised — try again or type the number.")}
    if identity.kind != "patient" or "mrn" not in identity.fields:
        return {"message": _("That is a staff badge. Scan the patient's wristband.")}
    s.pending = pending_from(identity, source, barcode_format)
    s.touch()
    return {"redirect": url_for("patient.confirm")}


@bp.get("/patient")
@needs("staff")
def scan(s: Session) -> str | Response:
    if s.patient is not None:
        return redirect(url_for("consent.who"))
    rt = runtime()
    rt.stage_mock_scene("patient")
    rt.scanner.clear()
    return render(
        "patient_scan.html",
        s=s,
        camera_error=rt.camera_error and _("Camera not connected — call IT. Type the number instead."),
        error=request.args.get("error") and _("Identity not confirmed. Check the wristband and scan again."),
        scan_seq=rt.scanner.seq,
    )


@bp.get("/patient/scan")
@needs("staff", touch=False)
def scan_poll(s: Session) -> Response:
    rt = runtime()
    rt.scanner.want()
    hit = rt.scanner.latest(request.args.get("after", type=int) or 0)
    if hit is None:
        error = _("Camera not connected — call IT. Type the number instead.") if rt.camera is None else None
        return jsonify(seq=rt.scanner.seq, error=error)
    rt.scanner.clear()
    return jsonify(seq=hit.seq, **outcome(s, hit.identity, "barcode", hit.format))


@bp.get("/patient/type")
@needs("staff")
def type_number(s: Session) -> str:
    return render("patient_type.html", s=s)


def check_typed(number: str) -> str | None:
    """An error message for a typed patient number, or None if it is acceptable."""
    if not TYPED_ID.fullmatch(number):
        return _("Type the patient's number (letters and digits).")
    rule = runtime().config.ui.patient_id_check
    digits = number.replace(" ", "").replace("-", "")
    if rule == "nhs-mod11" and not nhs_number_valid(digits):
        return _("That NHS number is not valid (check digit). Check each digit and type it again.")
    if rule == "gs1-mod10" and not gs1_mod10_valid(digits):
        return _("That number is not valid (check digit). Check each digit and type it again.")
    return None


@bp.post("/patient/type")
@needs("staff")
def type_submit(s: Session) -> str | Response:
    number = request.form.get("mrn", "").strip()
    error = check_typed(number)
    if error:
        return render("patient_type.html", s=s, error=error)
    if runtime().config.ui.patient_id_check != "none":
        number = number.replace(" ", "").replace("-", "")
    s.pending = PendingPatient(mrn=number, source="manual")
    return redirect(url_for("patient.confirm"))


@bp.get("/patient/confirm")
@needs("staff")
def confirm(s: Session) -> str | Response:
    if s.pending is None:
        return redirect(url_for("patient.scan"))
    return render("patient_confirm.html", s=s, p=s.pending, mode=request.args.get("mode"))


def _typed_date(day: str, month: str, year: str) -> date | None:
    try:
        value = date(int(year), int(month), int(day))
    except ValueError:
        return None
    return value if date(1890, 1, 1) <= value <= date.today() else None


@bp.post("/patient/confirm")
@needs("staff")
def confirm_submit(s: Session) -> str | Response:
    pending = s.pending
    if pending is None:
        return redirect(url_for("patient.scan"))
    action = request.form.get("action", "")
    if action == "reject":
        s.pending = None
        runtime().events.record("patient-not-confirmed", actor=s.staff.id if s.staff else "station")
        return redirect(url_for("patient.scan", error="1"))
    if action == "name" and pending.name:
        by = "name"
    elif action == "birth_date" and pending.birth_date:
        by = "birth_date"
    elif action == "typed-dob":
        typed = _typed_date(
            request.form.get("day", ""), request.form.get("month", ""), request.form.get("year", "")
        )
        if typed is None:
            return render(
                "patient_confirm.html", s=s, p=pending, mode="dob", error=_("That date is not valid.")
            )
        pending.birth_date, by = typed.isoformat(), "birth_date"
    elif action == "typed-name":
        name = " ".join(request.form.get("name", "").split())
        if len(name) < 2:
            return render(
                "patient_confirm.html", s=s, p=pending, mode="name", error=_("Type the patient's name.")
            )
        pending.name, by = name, "name"
    else:
        return redirect(url_for("patient.confirm"))
    try:
        runtime().confirm_patient(s, by)
    except ValueError:
        return render(
            "patient_confirm.html", s=s, p=pending, error=_("Those details cannot be used. Type them again.")
        )
    runtime().events.record("patient-confirmed", actor=s.staff.id if s.staff else "station", by=by,
                            source=pending.source)  # fmt: skip
    return redirect(url_for("consent.who"))
