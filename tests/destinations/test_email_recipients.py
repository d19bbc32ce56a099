"""Per-report email recipients: the clinic's choices in kiosk.toml (address book, allowed domains), the
checks a nurse's choice passes, and delivery to exactly the chosen people through a real SMTP server
(aiosmtpd), directly, through the outbox, and after a retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kiosk import config as kiosk_config
from kiosk import fsutil
from kiosk.destinations import registry
from kiosk.destinations.base import DeliveryError, Parcel
from kiosk.destinations.email import MAX_CHOSEN, EmailConfig, RecipientProblem
from kiosk.outbox import sender
from kiosk.outbox.store import Outbox
from tests.destinations.conftest import STATION_ID, SealedParcel, sealed_parcel
from tests.smtp_server import SmtpServer, free_port, smtp_server

TEAM, RECORDS, DERM = "wound-team@clinic.test", "records@clinic.test", "derm@partner.test"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def _fields(**settings: Any) -> dict[str, Any]:
    return {
        "name": "wound team mail",
        "type": "email",
        "host": "127.0.0.1",
        "security": "none",
        "from": "kiosk@clinic.test",
        "timeout": 10,
    } | settings


def _asking(**settings: Any) -> EmailConfig:
    return EmailConfig.model_validate(
        _fields(
            ask_recipients=True,
            address_book=[
                {"name": "Wound team", "address": TEAM},
                {"name": "Records", "address": RECORDS},
                {"name": "Dermatology (partner)", "address": DERM},
            ],
            allowed_domains=["Clinic.Test"],
        )
        | settings
    )


def _with_params(made: SealedParcel, **params: Any) -> Parcel:
    return Parcel(made.report_id, made.parcel.sealed_path, made.parcel.header, params=params)


# --- configuration ---------------------------------------------------------------------------------
def test_defaults_keep_fixed_recipients() -> None:
    config = EmailConfig.model_validate(_fields(to=[TEAM]))
    assert not config.ask_recipients and config.address_book == [] and config.allowed_domains == []
    assert config.delivery_params(None) is None, "fixed recipients need nothing stored per delivery"
    assert config.delivery_params({"to": [TEAM.upper()]}) is None
    with pytest.raises(RecipientProblem) as caught:
        config.delivery_params({"to": [RECORDS]})
    assert caught.value.reason == "fixed"


def test_kiosk_toml_address_book_tables(tmp_path: Path) -> None:
    text = f"""
[station]
id = "{STATION_ID}"
data_dir = "{tmp_path}"

[[destination]]
name = "wound team mail"
type = "email"
host = "smtp.example.org"
from = "kiosk@example.org"
encryption = "passphrase"
passphrase_file = "/etc/kiosk/mail.key"
ask_recipients = true
to = ["team@example.org"]
allowed_domains = ["example.org", "@nhs.net"]

[[destination.address_book]]
name = "Wound team"
address = "team@example.org"

[[destination.address_book]]
name = "Tissue viability"
address = "tv@nhs.net"
"""
    (destination,) = kiosk_config.parse(text, tmp_path / "kiosk.toml").destination
    assert isinstance(destination, EmailConfig) and destination.ask_recipients
    assert [(e.name, e.address) for e in destination.address_book] == [
        ("Wound team", "team@example.org"),
        ("Tissue viability", "tv@nhs.net"),
    ]
    assert destination.allowed_domains == ["example.org", "nhs.net"]
    assert destination.delivery_params(None) == {"to": ["team@example.org"]}, "`kiosk send`: the preselection"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"to": []}, "at least 1"),
        ({"to": [TEAM], "address_book": [{"name": "x", "address": TEAM}]}, "only used with ask_recipients"),
        ({"to": [TEAM], "allowed_domains": ["clinic.test"]}, "only used with ask_recipients"),
        ({"ask_recipients": True}, "needs an address_book or allowed_domains"),
        ({"ask_recipients": True, "allowed_domains": ["clinic"]}, "not a mail domain"),
        ({"ask_recipients": True, "allowed_domains": ["clinic..test"]}, "not a mail domain"),
        ({"ask_recipients": True, "allowed_domains": ["-x.test"]}, "not a mail domain"),
        (
            {"ask_recipients": True, "to": [RECORDS], "address_book": [{"name": "T", "address": TEAM}]},
            "ticked at first",
        ),
        (
            {"ask_recipients": True, "address_book": [{"name": "a", "address": TEAM}] * 2},
            "only once",
        ),
        ({"ask_recipients": True, "address_book": [{"name": "", "address": TEAM}]}, "at least 1 character"),
        (
            {"ask_recipients": True, "address_book": [{"name": "T", "address": f"Team <{TEAM}>"}]},
            "plain email address",
        ),
        ({"to": ["a..b@clinic.test"]}, "plain email address"),
        ({"to": ['"a b"@clinic.test']}, "plain email address"),
        ({"to": ["a@clinic_test.org"]}, "plain email address"),
        ({"to": ["a" * 65 + "@clinic.test"]}, "plain email address"),
    ],
)
def test_configuration_rules(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EmailConfig.model_validate(_fields(**settings))


# --- what a nurse may choose -----------------------------------------------------------------------
def test_typed_addresses_stay_within_the_allowed_domains() -> None:
    config = _asking()
    assert config.typed_address(" j.smith ", "clinic.test") == "j.smith@clinic.test"
    assert config.typed_address("J.Smith@CLINIC.test") == "J.Smith@clinic.test"
    for text, domain, reason in [
        ("j.smith", "partner.test", "domain"),  # a domain button that was never offered
        ("j.smith", None, "domain"),
        ("j.smith@partner.test", None, "domain"),  # in the address book's domain, but not typeable
        ("jo smith", "clinic.test", "invalid"),
        ("", "clinic.test", "invalid"),
        ("a@b@clinic.test", None, "invalid"),
        ("x\r\nBcc: evil@evil.test", "clinic.test", "invalid"),
    ]:
        with pytest.raises(RecipientProblem) as caught:
            config.typed_address(text, domain)
        assert caught.value.reason == reason, text
    book_only = _asking(allowed_domains=[])
    with pytest.raises(RecipientProblem) as caught:
        book_only.typed_address("j.smith", "clinic.test")
    assert caught.value.reason == "fixed"


def test_delivery_params_are_checked_and_normalised() -> None:
    config = _asking(to=[TEAM])
    assert config.delivery_params(None) == {"to": [TEAM]}
    assert config.delivery_params({"to": [DERM, "new.person@clinic.test", DERM.upper()]}) == {
        "to": [DERM, "new.person@clinic.test"]
    }
    for chosen, reason in [
        ([], "none"),
        (["someone@partner.test"], "domain"),  # not in the book, domain not allowed
        (["not an address"], "invalid"),
        ("wound-team@clinic.test", "invalid"),  # a string, not a list
        ([f"n{i}@clinic.test" for i in range(MAX_CHOSEN + 1)], "too-many"),
    ]:
        with pytest.raises(RecipientProblem) as caught:
            config.delivery_params({"to": chosen})
        assert caught.value.reason == reason, chosen


# --- delivery --------------------------------------------------------------------------------------
def test_the_mail_goes_to_exactly_the_chosen_recipients(smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    config = _asking(port=smtp.port, to=[TEAM])
    receipt = registry.build(config).deliver(_with_params(made, to=[DERM, "j.smith@clinic.test"]))

    (mail,) = smtp.mailbox.for_report(made.report_id)
    assert mail.rcpt_tos == [DERM, "j.smith@clinic.test"]
    assert mail.message["To"] == f"{DERM}, j.smith@clinic.test"
    assert TEAM not in mail.rcpt_tos, "the preselection is only where the nurse started"
    assert "2 chosen recipient(s)" in receipt
    assert DERM not in receipt and "j.smith" not in receipt, "receipts count chosen people, never list them"


def test_without_params_the_preselection_is_used(smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    registry.build(_asking(port=smtp.port, to=[RECORDS])).deliver(made.parcel)
    (mail,) = smtp.mailbox.for_report(made.report_id)
    assert mail.rcpt_tos == [RECORDS]


def test_nothing_chosen_and_nothing_preselected_is_permanent(smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    with pytest.raises(DeliveryError, match="no recipients were chosen") as caught:
        registry.build(_asking(port=smtp.port)).deliver(made.parcel)
    assert caught.value.permanent
    assert not smtp.mailbox.for_report(made.report_id)


def test_recipients_the_settings_no_longer_allow_are_not_mailed(smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    narrowed = _asking(port=smtp.port, address_book=[{"name": "Wound team", "address": TEAM}])
    with pytest.raises(DeliveryError, match="no longer all allowed") as caught:
        registry.build(narrowed).deliver(_with_params(made, to=[TEAM, DERM]))
    assert caught.value.permanent
    assert DERM not in str(caught.value)
    assert not smtp.mailbox.for_report(made.report_id), "nobody gets it until a person decides"


def test_a_partly_refused_choice_counts_rather_than_names(smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    with pytest.raises(DeliveryError, match=r"partly delivered.*1 of 2") as caught:
        registry.build(_asking(port=smtp.port)).deliver(_with_params(made, to=[TEAM, "nobody@clinic.test"]))
    assert caught.value.permanent
    assert "nobody@" not in str(caught.value)


def test_through_the_outbox_a_retry_reaches_the_same_recipients(tmp_path: Path) -> None:
    port = free_port()
    made = sealed_parcel(tmp_path, "envelope")
    config = _asking(port=port, to=[TEAM])
    outbox = Outbox(tmp_path / "data")
    try:
        path = outbox.sealed_path(made.report_id, 1)
        fsutil.atomic_copy(made.parcel.sealed_path, path)
        chosen = {"to": [RECORDS, "a.nurse@clinic.test"]}
        outbox.enqueue(made.report_id, {path: made.parcel.header}, {config.name: path}, {config.name: chosen})
        destinations = {config.name: registry.build(config)}

        assert not sender.drain(outbox, destinations, timeout=0), "the server is down: transient"
        (waiting,) = outbox.deliveries()
        assert waiting.state == "pending" and waiting.params == chosen and waiting.recipient_count == 2
        outbox.close()

        outbox = Outbox(tmp_path / "data")  # a restart: the choice is durable
        with smtp_server(port) as server:
            assert outbox.retry(made.report_id) == 1
            assert sender.drain(outbox, destinations, timeout=10)
            (mail,) = server.mailbox.for_report(made.report_id)
            assert mail.rcpt_tos == [RECORDS, "a.nurse@clinic.test"]
        (done,) = outbox.deliveries()
        assert done.state == "delivered" and "2 chosen recipient(s)" in (done.receipt or "")
        assert RECORDS not in (done.receipt or "")
        assert not path.exists()
    finally:
        outbox.close()
