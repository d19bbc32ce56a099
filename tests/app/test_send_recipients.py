"""The Send screen's email recipients in real Chromium: a nurse ticks people from the clinic's address book
or types a name within an allowed domain on the on-screen keyboard, and the real outbox worker mails the
sealed report through a real SMTP server (aiosmtpd) to exactly those people. Sending with nobody ticked
is refused and keeps the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.app.conftest import (
    Station,
    choose_site,
    open_report,
    report_json,
    sign_in_with_pin,
    start_station,
    station_toml,
    take_photos,
    type_patient,
    verbal_consent,
)
from tests.smtp_server import Received, SmtpServer, smtp_server

MAIL = "Wound team mail"
TEAM, RECORDS = "wound-team@clinic.test", "records@clinic.test"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpServer) -> Iterator[Station]:
    """conftest's station plus an email destination whose recipients the nurse picks."""
    root = tmp_path_factory.mktemp("station-mail")
    extra = f"""
[[destination]]
name = "{MAIL}"
type = "email"
host = "127.0.0.1"
port = {smtp.port}
security = "none"
from = "kiosk@clinic.test"
encryption = "passphrase"
passphrase_file = "{root / "share.key"}"
ask_recipients = true
allowed_domains = ["clinic.test"]

[[destination.address_book]]
name = "Wound team"
address = "{TEAM}"

[[destination.address_book]]
name = "Records office"
address = "{RECORDS}"
"""
    running, stop = start_station(root, station_toml(root, extra=extra))
    yield running
    stop()


def _to_review(page: Page, mrn: str) -> None:
    sign_in_with_pin(page)
    type_patient(page, mrn)
    verbal_consent(page)
    choose_site(page)
    take_photos(page, 1)
    page.get_by_test_id("to-review").click()
    page.get_by_test_id("destination").filter(has_text=MAIL).click()
    expect(page.get_by_test_id("recipients")).to_be_visible()


def _recipient(page: Page, address: str) -> Locator:
    return page.locator(f'[data-testid="recipient"][data-address="{address}"]')


def _send_and_receive(page: Page, station: Station, smtp: SmtpServer) -> Received:
    before = len(smtp.mailbox.received)
    session = station.runtime.sessions.current
    assert session is not None and session.recipients, "the Send screen keeps the choice in the session"
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("done")).to_be_visible(timeout=15_000)
    arrived = smtp.mailbox.wait_for(before + 1)
    assert len(arrived) == before + 1, "the outbox worker mails the report"
    assert session.wiped == "sent" and session.recipients == {}, "the choice ends with the session"
    return arrived[-1]


def _opened(mail: Received, station: Station, tmp_path: Path) -> dict:
    (attachment,) = mail.message.iter_attachments()
    sealed = tmp_path / attachment.get_filename()
    sealed.write_bytes(attachment.get_content())
    return report_json(open_report(sealed, station.key_file))


def test_the_mail_goes_to_the_ticked_recipient_only(
    page: Page, station: Station, smtp: SmtpServer, tmp_path: Path
) -> None:
    _to_review(page, "MRN0077001")
    for address in (TEAM, RECORDS):
        expect(_recipient(page, address)).to_have_attribute("aria-checked", "false")
    _recipient(page, RECORDS).click()
    expect(_recipient(page, RECORDS)).to_have_attribute("aria-checked", "true")
    expect(_recipient(page, TEAM)).to_have_attribute("aria-checked", "false")

    mail = _send_and_receive(page, station, smtp)
    assert mail.rcpt_tos == [RECORDS]
    assert mail.message["To"] == RECORDS
    assert _opened(mail, station, tmp_path)["patient"]["mrn"] == "MRN0077001"
    assert list(station.share.glob("*.cpseal")) == [], "only the email destination was chosen"


def test_an_address_typed_on_the_on_screen_keyboard(
    page: Page, station: Station, smtp: SmtpServer, tmp_path: Path
) -> None:
    _to_review(page, "MRN0077002")
    # a domain outside the allowlist (a USB keyboard can type "@") is refused in plain words
    page.get_by_test_id("recipient-name").fill("someone@gmail.com")
    page.get_by_test_id("recipient-add").click()
    expect(page.get_by_test_id("send-error")).to_have_text(
        "Email can only go to addresses ending in @clinic.test."
    )
    expect(page.get_by_test_id("recipient-name")).to_have_value("someone@gmail.com")

    field = page.get_by_test_id("recipient-name")
    field.fill("")
    field.click()
    keyboard = page.get_by_test_id("osk")
    expect(keyboard).to_be_visible()
    for key in "a.nurse":
        keyboard.locator(f'button[data-key="{key}"]').click()
    expect(field).to_have_value("a.nurse")
    keyboard.locator('button[data-key="Enter"]').click()  # OK adds it with the (only) domain
    expect(_recipient(page, "a.nurse@clinic.test")).to_have_attribute("aria-checked", "true")

    mail = _send_and_receive(page, station, smtp)
    assert mail.rcpt_tos == ["a.nurse@clinic.test"]
    assert _opened(mail, station, tmp_path)["patient"]["mrn"] == "MRN0077002"


def test_send_without_a_recipient_is_refused_and_keeps_the_session(
    page: Page, station: Station, smtp: SmtpServer
) -> None:
    _to_review(page, "MRN0077003")
    before = len(smtp.mailbox.received)
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("send-error")).to_contain_text(f"Tick who gets the email from “{MAIL}”")
    session = station.runtime.sessions.current
    assert session is not None and session.patient is not None and session.patient.mrn == "MRN0077003"
    assert len(session.photos) == 1
    assert station.runtime.outbox.deliveries(states=("pending", "sending")) == []

    _recipient(page, TEAM).click()
    mail = _send_and_receive(page, station, smtp)
    assert len(smtp.mailbox.received) == before + 1
    assert mail.rcpt_tos == [TEAM]
