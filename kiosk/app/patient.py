"""Screen 2, patient: scan the wristband (live preview, keyboard-wedge scanner) or type the number, then
confirm a second identifier (name or date of birth). No photo can be taken before this is done.

The second identifier comes from the wristband's payload; when the band (or the typed number) has none and
`[patient_lookup]` is configured, from the hospital's FHIR record (kiosk.patient_lookup), which the nurse
confirms with the patient; otherwise the nurse asks the patient and types it. The report records which
(`confirmed_from`). A lookup that fails in any way only falls back to typing: it never blocks the screen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from flask import Blueprint, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response

from kiosk.app.common import needs, render, runtime
from kiosk.app.i18n import _
from kiosk.patient_lookup import LookupFailed, PatientDemographics, PatientLookupConfig, lookup
from kiosk.scan.payload import Identity, gs1_mod10_valid, nhs_number_valid
from kiosk.session import PendingPatient, Session

bp = Blueprint("patient", __name__)
TYPED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9 /-]{0,39}")
SecondFrom = Literal["payload", "fhir", "typed"]


@dataclass
class Pending(PendingPatient):
    """A pending patient plus what the FHIR lookup found: in the session's memory only, wiped with it."""

    record: PatientDemographics | None = field(default=None, repr=False)
    lookup_outcome: str | None = None  # None: not looked up (yet); "found" or a LookupFailed outcome


def lookup_messages() -> dict[str, str]:
    """What the nurse reads when the record gives no second identifier; each ends in what to do."""
    ask = _("Ask the patient and type their date of birth or name.")
    return {
        "not-found": _("No patient with this number in the hospital record. Check the number.") + " " + ask,
        "ambiguous": _("Several patients match this number: check the wristband.") + " " + ask,
        "no-details": _("The hospital record has no name or date of birth for this number.") + " " + ask,
        "unreachable": _("The hospital record did not answer.") + " " + ask,
        "failed": _("The hospital record cannot be used now — tell IT.") + " " + ask,
    }


def lookup_config() -> PatientLookupConfig | None:
    config = runtime().config.patient_lookup
    return config if config is not None and config.enabled else None


def needs_lookup(pending: PendingPatient) -> bool:
    """Only a number with no second identifier is looked up, once per pending patient."""
    return (
        isinstance(pending, Pending)
        and pending.lookup_outcome is None
        and not pending.name
        and not pending.birth_date
        and lookup_config() is not None
    )


def look_up(s: Session, pending: Pending) -> None:
    config = lookup_config()
    assert config is not None
    try:
        pending.record, pending.lookup_outcome = lookup(config, pending.mrn, pending.issuer), "found"
    except LookupFailed as exc:
        pending.record, pending.lookup_outcome = None, exc.outcome
    s.touch()  # the nurse waited for the answer: not idle
    runtime().events.record(
        "patient-lookup", actor=s.staff.id if s.staff else "station", outcome=pending.lookup_outcome
    )


def pending_from(identity: Identity, source: str, barcode_format: str | None = None) -> Pending:
    fields = identity.fields
    return Pending(
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
    if needs_lookup(s.pending):  # the next page waits for the record: say so meanwhile
        return {"redirect": url_for("patient.confirm"), "status": _("Looking up the patient…")}
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
    return render("patient_type.html", s=s, lookup=lookup_config() is not None)


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
        return render("patient_type.html", s=s, error=error, lookup=lookup_config() is not None)
    if runtime().config.ui.patient_id_check != "none":
        number = number.replace(" ", "").replace("-", "")
    s.pending = Pending(mrn=number, source="manual")
    return redirect(url_for("patient.confirm"))


@bp.get("/patient/confirm")
@needs("staff")
def confirm(s: Session) -> str | Response:
    pending = s.pending
    if pending is None:
        return redirect(url_for("patient.scan"))
    if isinstance(pending, Pending) and needs_lookup(pending):
        look_up(s, pending)
    return _confirm_page(s, pending, mode=request.args.get("mode"))


def _confirm_page(s: Session, pending: PendingPatient, **extra: object) -> str:
    record = pending.record if isinstance(pending, Pending) else None
    outcome = pending.lookup_outcome if isinstance(pending, Pending) else None
    if record is not None:
        extra["mode"] = None  # the record is confirmed or rejected, never replaced by typing
    return render(
        "patient_confirm.html",
        s=s,
        p=pending,
        record=record,
        lookup_message=lookup_messages().get(outcome or ""),
        lookup_retry=outcome in ("unreachable", "failed"),
        **extra,
    )


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
    record = pending.record if isinstance(pending, Pending) else None
    actor = s.staff.id if s.staff else "station"
    if action == "reject":
        s.pending = None
        runtime().events.record("patient-not-confirmed", actor=actor, record=record is not None)
        return redirect(url_for("patient.scan", error="1"))
    if record is not None and action.startswith("typed-"):
        return redirect(url_for("patient.confirm"))  # with a record, the patient confirms the record
    if action == "retry-lookup" and isinstance(pending, Pending):
        pending.record, pending.lookup_outcome = None, None
        return redirect(url_for("patient.confirm"))
    source: SecondFrom = "payload"
    if action == "record-matches" and record is not None:
        # The patient told the nurse the date of birth (or name) the record holds: the record's details
        # become the report's, as if the wristband had carried them.
        pending.name, pending.birth_date = record.name, record.birth_date
        by, source = ("birth_date" if record.birth_date else "name"), "fhir"
    elif action == "name" and pending.name:
        by = "name"
    elif action == "birth_date" and pending.birth_date:
        by = "birth_date"
    elif action == "typed-dob":
        typed = _typed_date(
            request.form.get("day", ""), request.form.get("month", ""), request.form.get("year", "")
        )
        if typed is None:
            return _confirm_page(s, pending, mode="dob", error=_("That date is not valid."))
        pending.birth_date, by, source = typed.isoformat(), "birth_date", "typed"
    elif action == "typed-name":
        name = " ".join(request.form.get("name", "").split())
        if len(name) < 2:
            return _confirm_page(s, pending, mode="name", error=_("Type the patient's name."))
        pending.name, by, source = name, "name", "typed"
    else:
        return redirect(url_for("patient.confirm"))
    try:
        patient = runtime().confirm_patient(s, by)
    except ValueError:
        if source == "fhir" and isinstance(pending, Pending):  # a record the report cannot carry: type it
            pending.name = pending.birth_date = pending.record = None
            pending.lookup_outcome = "failed"
        return _confirm_page(s, pending, error=_("Those details cannot be used. Type them again."))
    # runtime.confirm_patient builds the Patient from the pending one; where the second identifier came
    # from is this screen's knowledge, so it is added here (a value from the model's own Literal).
    s.patient = patient.model_copy(update={"confirmed_from": source})
    runtime().events.record(
        "patient-confirmed", actor=actor, by=by, source=pending.source, confirmed_from=source
    )
    return redirect(url_for("consent.who"))
