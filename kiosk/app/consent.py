"""Screen 3, consent: who consents, how (verbal witnessed by the signed-in nurse, or written with a
signature on screen), each purpose answered yes or no; or the documented exception "unable to consent:
clinical necessity" with a reason. Consent can be withdrawn on any later screen (that wipes the session).
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, redirect, request, session, url_for
from pydantic import ValidationError
from werkzeug.wrappers import Response

from kiosk.app.common import needs, render, runtime
from kiosk.app.i18n import _
from kiosk.report.model import PURPOSES, Consent, utc_now
from kiosk.session import ConsentDraft, Session

bp = Blueprint("consent", __name__)
MAX_SIGNATURE_BYTES = 1024 * 1024

DEFAULT_TEXT = (
    "Photographs of your wound will be taken on this station to support your care. They are encrypted "
    "on the station and sent only to the places your clinic has set up. You can say yes or no to each "
    "use below, and you can withdraw before the photos are sent. Saying no does not change your care."
)


def purpose_labels() -> dict[str, tuple[str, str]]:
    """purpose -> (short label, the question read to the patient)."""
    return {
        "clinical_care": (_("Clinical care"), _("May the photos be used for your clinical care?")),
        "medical_record": (_("Medical record"), _("May the photos be kept in your medical record?")),
        "education": (_("Education"), _("May the photos be used to teach staff and students?")),
        "research": (_("Research"), _("May the photos be used for approved research?")),
        "publication": (
            _("Publication"),
            _("May the photos be published (for example in a journal), without your name?"),
        ),
    }


def consenter_labels() -> dict[str, str]:
    return {
        "patient": _("Patient"),
        "guardian": _("Parent or guardian"),
        "substitute_decision_maker": _("Substitute decision-maker"),
        "none": _("Unable to consent"),
    }


def method_labels() -> dict[str, str]:
    return {
        "verbal": _("Verbal consent"),
        "written": _("Written consent (signature)"),
        "clinical_necessity": _("Clinical necessity"),
    }


@lru_cache(maxsize=4)
def _read_text(path: Path, mtime: float) -> str:
    return path.read_text(encoding="utf-8").strip()


def consent_text() -> tuple[str, str]:
    """(wording, version) of the clinic's consent text; the built-in text if none is configured."""
    ui = runtime().config.ui
    if ui.consent_text_file is None:
        return _(DEFAULT_TEXT), ui.consent_text_version
    try:
        path = ui.consent_text_file
        return _read_text(path, path.stat().st_mtime), ui.consent_text_version
    except OSError:
        return _(DEFAULT_TEXT), ui.consent_text_version + " (file missing: built-in text shown)"


def _draft(s: Session) -> ConsentDraft:
    return s.consent_draft


@bp.get("/consent")
@needs("patient")
def who(s: Session) -> str | Response:
    if s.consent is not None:
        return redirect(url_for("capture.index"))
    return render("consent_who.html", s=s, labels=consenter_labels())


@bp.post("/consent/who")
@needs("patient")
def who_submit(s: Session) -> Response:
    consenter = request.form.get("consenter", "")
    if consenter not in consenter_labels():
        return redirect(url_for("consent.who"))
    s.consent_draft = ConsentDraft(consenter=consenter)
    if consenter == "none":
        s.consent_draft.method = "clinical_necessity"
        return redirect(url_for("consent.reason"))
    if consenter in ("guardian", "substitute_decision_maker"):
        return redirect(url_for("consent.name"))
    return redirect(url_for("consent.how"))


@bp.get("/consent/name")
@needs("patient")
def name(s: Session) -> str | Response:
    if _draft(s).consenter not in ("guardian", "substitute_decision_maker"):
        return redirect(url_for("consent.who"))
    return render("consent_name.html", s=s, who=consenter_labels()[_draft(s).consenter or "patient"])


@bp.post("/consent/name")
@needs("patient")
def name_submit(s: Session) -> str | Response:
    value = " ".join(request.form.get("name", "").split())
    if len(value) < 2:
        return render(
            "consent_name.html",
            s=s,
            who=consenter_labels()[_draft(s).consenter or "patient"],
            error=_("Type the name of the person giving consent."),
        )
    _draft(s).consenter_name = value
    return redirect(url_for("consent.how"))


@bp.get("/consent/how")
@needs("patient")
def how(s: Session) -> str | Response:
    if _draft(s).consenter in (None, "none"):
        return redirect(url_for("consent.who"))
    text, version = consent_text()
    return render("consent_how.html", s=s, text=text, version=version)


@bp.post("/consent/how")
@needs("patient")
def how_submit(s: Session) -> Response:
    method = request.form.get("method", "")
    if method not in ("verbal", "written"):
        return redirect(url_for("consent.how"))
    _draft(s).method = method
    _draft(s).purposes = {}
    return redirect(url_for("consent.purpose", index=0))


@bp.get("/consent/purpose/<int:index>")
@needs("patient")
def purpose(s: Session, index: int) -> str | Response:
    draft = _draft(s)
    if draft.method not in ("verbal", "written") or not 0 <= index < len(PURPOSES):
        return redirect(url_for("consent.who"))
    key = PURPOSES[index]
    label, question = purpose_labels()[key]
    return render(
        "consent_purpose.html",
        s=s,
        index=index,
        total=len(PURPOSES),
        key=key,
        label=label,
        question=question,
        answer=draft.purposes.get(key),
    )


@bp.post("/consent/purpose/<int:index>")
@needs("patient")
def purpose_submit(s: Session, index: int) -> str | Response:
    draft = _draft(s)
    if draft.method not in ("verbal", "written") or not 0 <= index < len(PURPOSES):
        return redirect(url_for("consent.who"))
    draft.purposes[PURPOSES[index]] = request.form.get("answer") == "yes"
    if index + 1 < len(PURPOSES):
        return redirect(url_for("consent.purpose", index=index + 1))
    if draft.method == "written":
        return redirect(url_for("consent.sign"))
    return finish(s)


@bp.get("/consent/sign")
@needs("patient")
def sign(s: Session) -> str | Response:
    draft = _draft(s)
    if draft.method != "written" or len(draft.purposes) < len(PURPOSES):
        return redirect(url_for("consent.who"))
    text, version = consent_text()
    return render(
        "consent_sign.html", s=s, text=text, version=version, purposes=draft.purposes, labels=purpose_labels()
    )


def _png_from_data_url(value: str) -> bytes | None:
    prefix = "data:image/png;base64,"
    if not value.startswith(prefix):
        return None
    try:
        data = base64.b64decode(value[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) > MAX_SIGNATURE_BYTES:
        return None
    return data


@bp.post("/consent/sign")
@needs("patient")
def sign_submit(s: Session) -> str | Response:
    draft = _draft(s)
    png = _png_from_data_url(request.form.get("signature", ""))
    if png is None:
        text, version = consent_text()
        return render(
            "consent_sign.html",
            s=s,
            text=text,
            version=version,
            purposes=draft.purposes,
            labels=purpose_labels(),
            error=_("Please sign in the box, then tap Done."),
        )
    draft.signature_png = png
    return finish(s)


@bp.get("/consent/reason")
@needs("patient")
def reason(s: Session) -> str | Response:
    if _draft(s).method != "clinical_necessity":
        return redirect(url_for("consent.who"))
    return render("consent_reason.html", s=s, presets=_reason_presets())


def _reason_presets() -> list[str]:
    return [
        _("Patient unconscious"),
        _("Emergency: delay would harm the patient"),
        _("Patient lacks capacity and no decision-maker is available"),
    ]


@bp.post("/consent/reason")
@needs("patient")
def reason_submit(s: Session) -> str | Response:
    draft = _draft(s)
    if draft.method != "clinical_necessity":
        return redirect(url_for("consent.who"))
    text = " ".join(request.form.get("reason", "").split())
    if len(text) < 3:
        return render(
            "consent_reason.html",
            s=s,
            presets=_reason_presets(),
            error=_("Give the reason the patient cannot consent."),
        )
    draft.exception_reason = text
    # the exception covers care and the record only; teaching, research and publication need consent
    draft.purposes = {p: p in ("clinical_care", "medical_record") for p in PURPOSES}
    return finish(s)


def finish(s: Session) -> str | Response:
    draft = _draft(s)
    _, version = consent_text()
    assert s.staff is not None
    try:
        consent = Consent(
            consenter=draft.consenter,  # type: ignore[arg-type]
            consenter_name=draft.consenter_name or None,
            method=draft.method,  # type: ignore[arg-type]
            witness_staff_id=s.staff.id if draft.method == "verbal" else None,
            purposes=draft.purposes,  # type: ignore[arg-type]
            exception_reason=draft.exception_reason or None,
            text_version=version,
            recorded_at=utc_now(),
            signature_png=draft.signature_png,
        )
    except ValidationError:
        return redirect(url_for("consent.who"))
    s.consent = consent
    runtime().events.record(
        "consent-recorded", actor=s.staff.id, method=consent.method, consenter=consent.consenter
    )
    return redirect(url_for("capture.index"))


@bp.post("/consent/withdraw")
@needs("staff")
def withdraw(s: Session) -> Response:
    runtime().sessions.end(s, "consent-withdrawn")
    session.pop("sid", None)
    return redirect(url_for("signin.index", ended="withdrawn"))
