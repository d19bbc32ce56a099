"""Email destination: the sealed report as an attachment, sent through the organisation's SMTP server.

Subject and body carry the report id, station and time only (the sealed header's facts), never patient
data; the attachment is the .cpseal file, which mail systems can store and forward without exposing it.

SMTP has no idempotency: a crash after the server accepted the message but before the outbox recorded it
sends it again. Every attempt is byte-identical and carries Message-ID ``<report-id@station-id.kiosk>``,
so mail systems that deduplicate on Message-ID (most mailbox stores and archivers) keep one copy, and a
person who sees two can tell they are the same report.

Recipients are either fixed (``to``) or, with ``ask_recipients``, picked by the nurse per report from the
clinic's address book and addresses typed within ``allowed_domains``. The choice travels with the delivery
as its parameters (``{"to": [...]}``, stored in the outbox), so every retry goes to the same people.
Chosen addresses are personal data: receipts and errors give their number, not the addresses.
"""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.destinations.transport import LOCAL_HOSTS, network_error, read_secret_file, tls_context
from kiosk.sealing.sealed_file import EXTENSION, MEDIA_TYPE, SealedHeader

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
MAX_CHOSEN = 20  # recipients per report: a picked list, not a mailing list

# RFC 5321/5322 dot-atom local part and letter-digit-hyphen domain labels: stricter than the RFCs allow
# (no quoted local parts, no address literals, ASCII only), which is what a clinic's mail system uses and
# what smtplib can send without SMTPUTF8.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")

RecipientReason = Literal["none", "invalid", "domain", "too-many", "fixed"]


class RecipientProblem(ValueError):
    """Chosen recipients this destination's settings do not allow. ``reason`` lets the touchscreen say it
    in the nurse's language; the message (English) is for the command line and IT."""

    def __init__(self, reason: RecipientReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AddressBookEntry(BaseModel):
    """One clinic-approved recipient offered on the Send screen."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=60, description="What the nurse reads, e.g. Wound team")
    address: str = Field(description="name@domain")

    @field_validator("address")
    @classmethod
    def _one_address(cls, value: str) -> str:
        return _address(value)


class EmailConfig(DestinationConfigBase):
    # `from` is a Python keyword: the TOML key is "from", the attribute is `sender`.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["email"]
    host: str = Field(min_length=1, description="SMTP server (submission), e.g. smtp.example.org")
    port: int | None = Field(None, ge=1, le=65535, description="Default: 587 starttls, 465 tls, 25 none")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description='"none" only for a relay on this machine (localhost)'
    )
    username: str | None = Field(None, description="SMTP AUTH user (with password_file)")
    password_file: Path | None = Field(None, description="SMTP AUTH password, one line, not world-readable")
    sender: str = Field(alias="from", description="Envelope and header sender address")
    to: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Recipient addresses; with ask_recipients, the ones ticked at the start",
    )
    ask_recipients: bool = Field(
        False, description="The nurse picks recipients per report on the Send screen"
    )
    address_book: list[AddressBookEntry] = Field(
        default_factory=list, max_length=50, description="With ask_recipients: the addresses offered"
    )
    allowed_domains: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="With ask_recipients: domains of addresses the nurse may type (exact match)",
    )
    ca_file: Path | None = Field(None, description="PEM CA certificate(s) for a private CA")
    timeout: float = Field(60.0, gt=0, le=900, description="Seconds without progress before giving up")

    @field_validator("sender")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _recipients(cls, values: list[str]) -> list[str]:
        return [_address(v) for v in values]

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            domain = value.strip().lower().removeprefix("@")
            if "." not in domain or not _domain_ok(domain):
                raise ValueError(f"{value!r} is not a mail domain (example.org)")
            out.append(domain)
        return out

    @model_validator(mode="after")
    def _transport_rules(self) -> EmailConfig:
        if self.security == "none" and self.host.lower() not in LOCAL_HOSTS:
            raise ValueError('security = "none" is only for a relay on localhost; use starttls or tls')
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self

    @model_validator(mode="after")
    def _recipient_rules(self) -> EmailConfig:
        if not self.ask_recipients:
            # Settings that would silently do nothing are refused, so IT notices the missing switch.
            if self.address_book or self.allowed_domains:
                raise ValueError("address_book and allowed_domains are only used with ask_recipients = true")
            if not self.to:
                raise ValueError("to needs at least 1 address (or set ask_recipients = true)")
            return self
        if not self.address_book and not self.allowed_domains:
            raise ValueError("ask_recipients needs an address_book or allowed_domains to choose from")
        book = [_key(entry.address) for entry in self.address_book]
        if len(set(book)) != len(book):
            raise ValueError("each address_book address may appear only once")
        outside = [address for address in self.to if _key(address) not in book]
        if outside:
            raise ValueError(f"with ask_recipients, to lists address_book entries ticked at first: {outside}")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    # --- per-report recipients ------------------------------------------------------------------------
    def permits(self, address: str) -> bool:
        """Whether the settings allow ``address``: in ``to`` or the address book, or an allowed domain."""
        key = _key(address)
        if key in {_key(a) for a in self.to} | {_key(e.address) for e in self.address_book}:
            return True
        return key.rpartition("@")[2] in self.allowed_domains

    def typed_address(self, text: str, domain: str | None = None) -> str:
        """An address typed on the Send screen: a name plus one of ``allowed_domains`` (picked, so a typo
        cannot send a report to the wrong organisation), or a whole address within them."""
        text = text.strip()
        if not self.ask_recipients or not self.allowed_domains:
            raise RecipientProblem("fixed", f"{self.name}: addresses cannot be typed for this destination")
        if "@" not in text:
            if domain is None or domain.lower() not in self.allowed_domains:
                raise RecipientProblem("domain", f"{self.name}: choose one of {self.allowed_domains}")
            text = f"{text}@{domain.lower()}"
        try:
            address = _address(text)
        except ValueError as exc:
            raise RecipientProblem("invalid", str(exc)) from exc
        local, _, typed_domain = address.rpartition("@")
        if typed_domain.lower() not in self.allowed_domains:
            raise RecipientProblem("domain", f"{self.name}: only addresses at {self.allowed_domains}")
        return f"{local}@{typed_domain.lower()}"

    def delivery_params(self, given: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The parameters stored with this destination's delivery of one report, checked.

        Fixed recipients need none (the delivery uses ``to``). With ``ask_recipients`` the chosen addresses
        are stored; without a choice (``kiosk send``) the preselected ``to`` is used.
        """
        chosen = None if given is None else given.get("to")
        if not self.ask_recipients:
            if chosen is not None and [_key(a) for a in chosen] != [_key(a) for a in self.to]:
                raise RecipientProblem("fixed", f"{self.name}: the recipients are fixed in kiosk.toml")
            return None
        return {"to": self.checked_recipients(self.to if chosen is None else chosen)}

    def checked_recipients(self, chosen: object) -> list[str]:
        """Plain, permitted, unique addresses, 1 to MAX_CHOSEN of them (else RecipientProblem)."""
        if isinstance(chosen, str) or not isinstance(chosen, Sequence):
            raise RecipientProblem("invalid", f"{self.name}: recipients must be a list of addresses")
        addresses: list[str] = []
        for value in chosen:
            if not isinstance(value, str):
                raise RecipientProblem("invalid", f"{self.name}: recipients must be addresses")
            try:
                address = _address(value)
            except ValueError as exc:
                raise RecipientProblem("invalid", str(exc)) from exc
            if not self.permits(address):
                raise RecipientProblem("domain", f"{self.name}: an address outside the allowed recipients")
            if _key(address) not in {_key(a) for a in addresses}:
                addresses.append(address)
        if not addresses:
            raise RecipientProblem("none", f"{self.name}: choose at least one email recipient")
        if len(addresses) > MAX_CHOSEN:
            raise RecipientProblem("too-many", f"{self.name}: at most {MAX_CHOSEN} recipients per report")
        return addresses


def _address(value: str) -> str:
    """A bare address (``name@domain``): display names would only add places for mistakes."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an address must be one line")
    _, address = parseaddr(value)
    if address != value.strip() or address.count("@") != 1 or not all(address.split("@")):
        raise ValueError(f"{value!r} is not a plain email address (name@example.org)")
    local, _, domain = address.partition("@")
    if len(address) > 254 or len(local) > 64 or not _LOCAL_PART.match(local) or not _domain_ok(domain):
        raise ValueError(f"{value!r} is not a plain email address (name@example.org)")
    return address


def _domain_ok(domain: str) -> bool:
    return len(domain) <= 253 and all(_LABEL.match(label) for label in domain.split("."))


def _key(address: str) -> str:
    """Compare addresses as mail systems do in practice: the domain never matters in case, and clinics'
    servers treat local parts case-insensitively too."""
    return address.lower()


def message_id(header: SealedHeader) -> str:
    return f"<{header.report_id}@{header.station_id}.kiosk>"


def _body(header: SealedHeader, filename: str) -> str:
    lines = [
        f"A wound photo report from station {header.station_id}, sealed at {header.created_at} (UTC),",
        f"is attached as {filename}.",
        "",
        "The file is encrypted: this email and its attachment contain no readable patient data.",
        "",
    ]
    if header.encryption == "envelope" and header.key_server_url:
        open_page = header.key_server_url.rstrip("/") + "/open"
        lines += [
            "To open it:",
            f"  1. Go to {open_page} and sign in.",
            "  2. Drop the attached file onto the page. Your browser fetches the key (the key server",
            "     records who opened the report) and shows the report. Nothing is saved on your computer",
            "     unless you choose to download it.",
        ]
    else:
        lines += [
            "It is sealed with your organisation's passphrase for this mailbox. Open it as your IT team",
            "has set up (for example `kiosk report open FILE --passphrase-file KEYFILE --out DIR`,",
            "or any RNCryptor v3 tool).",
        ]
    lines += [
        "",
        f"Report id: {header.report_id}",
        "If you receive this report twice, both messages are the same report (same id and Message-ID).",
        "",
        "This message was sent automatically by the clinical photo station; replies are not read.",
    ]
    return "\n".join(lines) + "\n"


def recipients(config: EmailConfig, parcel: Parcel) -> list[str]:
    """Who gets this delivery: the report's chosen recipients, stored with the delivery, else ``to``.

    Stored choices are checked against the current settings again: if IT narrowed them while the report
    waited, a person decides (permanent failure) rather than the station mailing someone no longer approved.
    """
    chosen = parcel.params.get("to")
    if chosen is None:
        if not config.to:
            raise DeliveryError(f"{config.name}: no recipients were chosen for this report", permanent=True)
        return list(config.to)
    try:
        return config.checked_recipients(chosen)
    except RecipientProblem as exc:
        raise DeliveryError(
            f"{config.name}: the recipients chosen for this report are no longer all allowed by the settings"
            " (address_book, allowed_domains); fix them and retry, or drop the delivery",
            permanent=True,
        ) from exc


def build_message(config: EmailConfig, parcel: Parcel, to: Sequence[str] | None = None) -> EmailMessage:
    """The whole message, identical on every attempt (fixed Date and Message-ID)."""
    header = parcel.header
    filename = f"{parcel.report_id}{EXTENSION}"
    sent = datetime.strptime(header.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(recipients(config, parcel) if to is None else to)
    message["Subject"] = f"Wound photo report {parcel.report_id}"
    message["Date"] = format_datetime(sent)
    message["Message-ID"] = message_id(header)
    message["X-Report-Id"] = parcel.report_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to a kiosk
    message.set_content(_body(header, filename))
    maintype, subtype = MEDIA_TYPE.split("/")
    try:
        data = parcel.sealed_path.read_bytes()
    except OSError as exc:
        raise DeliveryError(f"cannot read the sealed file: {exc.strerror}") from exc
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    # A fixed boundary instead of a random one keeps retries byte-identical. "=_" never occurs in base64
    # or in the ASCII body, so it cannot collide with the content.
    message.set_boundary(f"=_cpseal_{parcel.report_id}")
    return message


def _smtp_failure(code: int, text: bytes | str, where: str, what: str) -> DeliveryError:
    # 5xx replies are final (bad address, policy, too large): retrying the same message cannot help.
    said = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    said = " ".join(said.split())[:200]
    return DeliveryError(f"{where}: {what}: {code} {said}", permanent=code >= 500)


class EmailDestination(Destination):
    type_name = "email"
    config: EmailConfig

    def deliver(self, parcel: Parcel) -> str:
        config = self.config
        to = recipients(config, parcel)
        chosen = "to" in parcel.params  # chosen per report: personal data, so counted, not listed
        message = build_message(config, parcel, to)
        password = read_secret_file(config.password_file, "SMTP password") if config.password_file else None
        where = f"smtp {config.host}:{config.effective_port}"
        try:
            refused = self._send(message, password, to)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{where}: the username or password was refused", permanent=True) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc}", permanent=True) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code = max(code for code, _ in exc.recipients.values())
            raise _smtp_failure(code, "every recipient was refused", where, "refused") from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise _smtp_failure(exc.smtp_code, exc.smtp_error, where, "refused the message") from exc
        except smtplib.SMTPConnectError as exc:
            raise DeliveryError(f"{where}: the server turned the connection away ({exc.smtp_code})") from exc
        except smtplib.SMTPResponseException as exc:
            raise _smtp_failure(exc.smtp_code, exc.smtp_error, where, "unexpected reply") from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise DeliveryError(f"{where}: the server closed the connection") from exc
        except OSError as exc:  # below SMTP: TLS, timeouts, DNS, refused connections
            hint = "check host, or set ca_file for a private CA"
            raise network_error(where, exc, timeout=config.timeout, hint=hint) from exc
        if refused:
            # The others have it now; a retry would send them a second copy, so this needs a person.
            worst = max(code for code, _ in refused.values())
            names = f"{len(refused)} of {len(to)}" if chosen else ", ".join(sorted(refused))
            raise _smtp_failure(worst, f"recipient(s) refused: {names}", where, "partly delivered")
        accepted = f"{len(to)} chosen recipient(s)" if chosen else ", ".join(to)
        return f"{where}: accepted for {accepted} message-id {message['Message-ID']}"

    def _send(
        self, message: EmailMessage, password: str | None, to: Sequence[str]
    ) -> dict[str, tuple[int, bytes]]:
        config = self.config
        # gethostname, not getfqdn: the latter waits on reverse DNS, which a clinic network may not have.
        local_name = socket.gethostname() or "kiosk"
        smtp: smtplib.SMTP
        if config.security == "tls":
            smtp = smtplib.SMTP_SSL(
                config.host,
                config.effective_port,
                local_hostname=local_name,
                timeout=config.timeout,
                context=tls_context(config.ca_file),
            )
        else:
            smtp = smtplib.SMTP(
                config.host, config.effective_port, local_hostname=local_name, timeout=config.timeout
            )
        with smtp:
            smtp.ehlo()
            if config.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
                smtp.starttls(context=tls_context(config.ca_file))
                smtp.ehlo()
            if config.username is not None and password is not None:
                _login(smtp, config.username, password)
            return smtp.send_message(message, from_addr=config.sender, to_addrs=list(to))


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """One attempt with one mechanism. smtplib's login() would try every mechanism the server offers in
    turn, which multiplies failed attempts against account lockout and hangs on some servers."""
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    smtp.user, smtp.password = username, password
    if "PLAIN" in offered:
        smtp.auth("PLAIN", smtp.auth_plain)
    elif "LOGIN" in offered:
        smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
    else:
        raise smtplib.SMTPNotSupportedError("the server offers no PLAIN or LOGIN authentication")
