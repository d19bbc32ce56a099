"""kiosk.session.Session.wipe(): the one exit drops everything the session held, the Send screen's email
recipients included."""

from __future__ import annotations

from datetime import date

from kiosk.report.model import Patient, Staff, utc_now
from kiosk.session import CapturedPhoto, PendingPatient, RecipientChoice, Session, SessionManager


def _full_session() -> Session:
    session = Session(Staff(id="1001", name="Alex Nurse", role="RN"))
    session.pending = PendingPatient(mrn="MRN-SESSION-1", source="manual")
    session.patient = Patient(
        mrn="MRN-SESSION-1", name="Robin Example", birth_date=date(1970, 5, 6), id_source="manual"
    )
    session.consent_draft.consenter_name = "Robin Example"
    session.add_photo(
        CapturedPhoto(id=session.new_photo_id(), captured_at=utc_now(), thumbnail=b"thumb", jpeg=b"jpeg")
    )
    session.destinations = ["Clinic mail"]
    session.recipients["Clinic mail"] = RecipientChoice(
        chosen=["wound.team@clinic.test"], typed=["a.nurse@clinic.test"]
    )
    return session


def test_wipe_clears_patient_photos_and_recipients() -> None:
    session = _full_session()
    photo = session.photos[0]
    choice = session.recipients["Clinic mail"]
    session.wipe("cancelled")
    assert session.wiped == "cancelled" and not session.active
    assert session.staff is None and session.pending is None and session.patient is None
    assert session.consent_draft.consenter_name == "" and session.consent is None
    assert session.photos == [] and photo.jpeg == b"" and photo.thumbnail == b""
    assert session.destinations == []
    assert session.recipients == {}
    assert choice.chosen == [] and choice.typed == [], "a reference kept elsewhere holds no address either"
    assert "clinic.test" not in repr(choice)


def test_every_end_through_the_manager_wipes_the_recipients() -> None:
    ended: list[str] = []
    manager = SessionManager(60, on_wipe=lambda s, reason, details: ended.append(reason))
    session = manager.start(Staff(id="1001", name="Alex Nurse", role="RN"))
    session.recipients["Clinic mail"] = RecipientChoice(chosen=["wound.team@clinic.test"])
    manager.start(Staff(id="1002", name="Sam Nurse", role="RN"))  # signing in replaces the old session
    assert ended == ["replaced"] and session.recipients == {}
