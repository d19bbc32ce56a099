"""The "email" destination against real SMTP servers (aiosmtpd): plain on localhost, STARTTLS, TLS, AUTH."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import ValidationError

from kiosk import config as kiosk_config
from kiosk.destinations import registry
from kiosk.destinations.base import DeliveryError
from kiosk.destinations.email import EmailConfig
from kiosk.outbox import sender
from kiosk.outbox.store import Outbox
from kiosk.sealing.sealed_file import MEDIA_TYPE
from tests import smtp_server
from tests.destinations.conftest import (
    KEY_SERVER_URL,
    PATIENT_MRN,
    PATIENT_NAME,
    STATION_ID,
    SealedParcel,
    TlsFiles,
    enqueue,
    free_port,
    sealed_parcel,
    secret_file,
)

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

LOGIN, PASSWORD = "kiosk@clinic.test", "smtp-pw-51e0c2"


class Mailbox(smtp_server.Mailbox):
    """The shared test mailbox, read here as (mail_from, rcpt_tos, raw) tuples or by Message-ID."""

    @property
    def messages(self) -> list[tuple[str, list[str], bytes]]:
        return [(r.mail_from, r.rcpt_tos, r.raw) for r in self.received]

    def with_id(self, message_id: str) -> list[EmailMessage]:
        return [r.message for r in self.received if r.message["Message-ID"] == message_id]


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        LOGIN.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=good, handled=False)  # handled=False: aiosmtpd answers 535 itself


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox
    controller: Controller


def _start(tls_ca: TlsFiles | None, kind: str, port: int | None = None) -> SmtpServer:
    mailbox = Mailbox()
    kwargs: dict[str, Any] = {"authenticator": _authenticate}
    if kind == "plain":
        kwargs["auth_require_tls"] = False
    elif kind == "starttls":
        assert tls_ca is not None
        kwargs |= {"tls_context": tls_ca.server_context(), "require_starttls": True, "auth_required": True}
    elif kind == "tls":
        assert tls_ca is not None
        # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; here the whole connection is TLS.
        kwargs |= {"ssl_context": tls_ca.server_context(), "auth_required": True, "auth_require_tls": False}
    port = port or free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs)
    controller.start()
    return SmtpServer(port, mailbox, controller)


@pytest.fixture(scope="module", params=["plain", "starttls", "tls"])
def smtp(request: pytest.FixtureRequest, tls_ca: TlsFiles) -> Iterator[SmtpServer]:
    server = _start(tls_ca, request.param)
    yield server
    server.controller.stop()


@pytest.fixture(scope="module")
def plain_smtp(tls_ca: TlsFiles) -> Iterator[SmtpServer]:
    server = _start(tls_ca, "plain")
    yield server
    server.controller.stop()


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return secret_file(tmp_path_factory.mktemp("smtp") / "password", PASSWORD)


def _config(port: int, security: str, made: SealedParcel, **settings: Any) -> EmailConfig:
    fields: dict[str, Any] = {
        "name": "wound team mail",
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "from": "kiosk@clinic.test",
        "to": ["wound-team@clinic.test", "records@clinic.test"],
        "timeout": 10,
    }
    if made.passphrase_file is not None:
        fields |= {"encryption": "passphrase", "passphrase_file": made.passphrase_file}
    return EmailConfig.model_validate(fields | settings)


def _auth(tls_ca: TlsFiles, password_file: Path) -> dict[str, Any]:
    return {"username": LOGIN, "password_file": password_file, "ca_file": tls_ca.ca_file}


def _only_attachment(message: EmailMessage) -> EmailMessage:
    (attachment,) = list(message.iter_attachments())
    return attachment  # type: ignore[return-value]


@pytest.mark.parametrize("encryption", ["envelope", "passphrase"])
def test_the_sealed_report_arrives_as_the_attachment_and_nothing_else_about_the_patient(
    smtp: SmtpServer,
    request: pytest.FixtureRequest,
    tls_ca: TlsFiles,
    password_file: Path,
    tmp_path: Path,
    encryption: str,
) -> None:
    kind = request.node.callspec.params["smtp"]
    made = sealed_parcel(tmp_path, encryption)  # type: ignore[arg-type]
    security = {"plain": "none"}.get(kind, kind)
    config = _config(smtp.port, security, made, **_auth(tls_ca, password_file))
    receipt = registry.build(config).deliver(made.parcel)

    message_id = f"<{made.report_id}@{STATION_ID}.kiosk>"
    assert message_id in receipt
    (message,) = smtp.mailbox.with_id(message_id)
    (mail_from, rcpt_tos, raw) = next(m for m in smtp.mailbox.messages if message_id.encode() in m[2])
    assert mail_from == "kiosk@clinic.test"
    assert rcpt_tos == ["wound-team@clinic.test", "records@clinic.test"]
    assert message["Subject"] == f"Wound photo report {made.report_id}"
    assert message["X-Report-Id"] == made.report_id
    attachment = _only_attachment(message)
    assert attachment.get_content_type() == MEDIA_TYPE
    assert attachment.get_filename() == f"{made.report_id}.cpseal"
    assert attachment.get_content() == made.sealed_bytes

    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    if encryption == "envelope":
        assert f"{KEY_SERVER_URL}/open" in text
    else:
        assert "passphrase" in text and "/open" not in text
    # No patient identifier anywhere: not in headers, body, or (as it is encrypted) the attachment.
    for secret in (PATIENT_MRN, PATIENT_NAME, PATIENT_NAME.split()[-1], "1950-01-02"):
        assert secret.encode() not in raw
        assert secret not in text


def test_a_resend_is_the_same_message(plain_smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    destination = registry.build(_config(plain_smtp.port, "none", made))
    destination.deliver(made.parcel)
    destination.deliver(made.parcel)  # the outbox retried after a crash between "sent" and "recorded"
    copies = [raw for _, _, raw in plain_smtp.mailbox.messages if made.report_id.encode() in raw]
    assert len(copies) == 2
    assert copies[0] == copies[1], "byte-identical, with one Message-ID, so mail systems can deduplicate"


def test_wrong_password_is_permanent(
    smtp: SmtpServer, request: pytest.FixtureRequest, tls_ca: TlsFiles, tmp_path: Path
) -> None:
    kind = request.node.callspec.params["smtp"]
    made = sealed_parcel(tmp_path, "envelope")
    wrong = secret_file(tmp_path / "wrong", "not-the-password")
    settings = {"username": LOGIN, "password_file": wrong, "ca_file": tls_ca.ca_file}
    config = _config(smtp.port, {"plain": "none"}.get(kind, kind), made, **settings)
    with pytest.raises(DeliveryError, match="username or password was refused") as caught:
        registry.build(config).deliver(made.parcel)
    assert caught.value.permanent
    assert not smtp.mailbox.with_id(f"<{made.report_id}@{STATION_ID}.kiosk>")


def test_tls_servers_need_a_trusted_certificate(
    tls_ca: TlsFiles, password_file: Path, tmp_path: Path
) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    for kind in ("starttls", "tls"):
        server = _start(tls_ca, kind)
        try:
            config = _config(server.port, kind, made, username=LOGIN, password_file=password_file)
            with pytest.raises(DeliveryError, match="certificate is not trusted") as caught:
                registry.build(config).deliver(made.parcel)
            assert caught.value.permanent
        finally:
            server.controller.stop()


def test_starttls_refused_when_the_server_does_not_offer_it(plain_smtp: SmtpServer, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    with pytest.raises(DeliveryError, match="does not offer STARTTLS") as caught:
        registry.build(_config(plain_smtp.port, "starttls", made)).deliver(made.parcel)
    assert caught.value.permanent


@pytest.mark.parametrize(
    ("to", "permanent", "message"),
    [
        (["nobody@clinic.test"], True, "550"),
        (["busy@clinic.test"], False, "451"),
        (["wound-team@clinic.test", "nobody@clinic.test"], True, "partly delivered.*nobody@clinic.test"),
    ],
)
def test_refused_recipients(
    plain_smtp: SmtpServer, tmp_path: Path, to: list[str], permanent: bool, message: str
) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    with pytest.raises(DeliveryError, match=message) as caught:
        registry.build(_config(plain_smtp.port, "none", made, to=to)).deliver(made.parcel)
    assert caught.value.permanent is permanent


def test_a_server_that_is_down_is_transient(tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    with pytest.raises(DeliveryError, match="refused") as caught:
        registry.build(_config(free_port(), "none", made, timeout=5)).deliver(made.parcel)
    assert not caught.value.permanent


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"host": "smtp.example.org", "security": "none"}, "only for a relay on localhost"),
        ({"to": []}, "at least 1"),
        ({"to": ["Wound Team <team@example.org>"]}, "plain email address"),
        ({"from": "kiosk@example.org\r\nBcc: x@evil.test"}, "one line"),
        ({"username": "kiosk"}, "go together"),
        ({"port": 0}, "greater than or equal to 1"),
    ],
)
def test_configuration_rules(settings: dict[str, Any], message: str) -> None:
    fields = {
        "name": "mail",
        "type": "email",
        "host": "smtp.example.org",
        "from": "kiosk@example.org",
        "to": ["team@example.org"],
    }
    with pytest.raises(ValidationError, match=message):
        EmailConfig.model_validate(fields | settings)


def test_kiosk_toml_uses_the_from_key(tmp_path: Path) -> None:
    text = f"""
[station]
id = "{STATION_ID}"
data_dir = "{tmp_path}"

[[destination]]
name = "wound team mail"
type = "email"
host = "smtp.example.org"
from = "kiosk@example.org"
to = ["team@example.org"]
username = "kiosk"
password_file = "/etc/kiosk/smtp.password"
encryption = "passphrase"
passphrase_file = "/etc/kiosk/mail.key"
"""
    (destination,) = kiosk_config.parse(text, tmp_path / "kiosk.toml").destination
    assert isinstance(destination, EmailConfig)
    assert destination.sender == "kiosk@example.org"
    assert (destination.security, destination.effective_port) == ("starttls", 587)


def test_down_then_back_is_delivered_exactly_once_through_the_outbox(
    outbox: Outbox, tls_ca: TlsFiles, password_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    made = sealed_parcel(tmp_path, "envelope")
    config = _config(port, "tls", made, **_auth(tls_ca, password_file))
    destinations = {config.name: registry.build(config)}
    path = enqueue(outbox, made, config.name)

    assert not sender.drain(outbox, destinations, timeout=0)
    (waiting,) = outbox.deliveries()
    assert waiting.state == "pending" and "refused" in (waiting.last_error or "")

    server = _start(tls_ca, "tls", port=port)
    try:
        assert outbox.retry(made.report_id) == 1
        assert sender.drain(outbox, destinations, timeout=10)
        assert outbox.deliveries()[0].state == "delivered"
        assert len(server.mailbox.with_id(f"<{made.report_id}@{STATION_ID}.kiosk>")) == 1
        assert len(server.mailbox.messages) == 1
    finally:
        server.controller.stop()
    assert not path.exists()
