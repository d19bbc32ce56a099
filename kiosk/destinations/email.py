"""Email destination: the sealed report as an attachment, sent through the organisation's SMTP server.

Subject and body carry the report id, station and time only (the sealed header's facts), never patient
data; the attachment is the .cpseal file, which mail systems can store and forward without exposing it.

SMTP has no idempotency: a crash after the server accepted the message but before the outbox recorded it
sends it again. Every attempt is byte-identical and carries Message-ID ``<report-id@station-id.kiosk>``,
so mail systems that deduplicate on Message-ID (most mailbox stores and archivers) keep one copy, and a
person who sees two can tell they are the same report.
"""

from __future__ import annotations

import smtplib
import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.destinations.transport import LOCAL_HOSTS, network_error, read_secret_file, tls_context
from kiosk.sealing.sealed_file import EXTENSION, MEDIA_TYPE, SealedHeader

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


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
    to: list[str] = Field(min_length=1, max_length=50, description="Recipient addresses")
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

    @model_validator(mode="after")
    def _transport_rules(self) -> EmailConfig:
        if self.security == "none" and self.host.lower() not in LOCAL_HOSTS:
            raise ValueError('security = "none" is only for a relay on localhost; use starttls or tls')
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]


def _address(value: str) -> str:
    """A bare address (``name@domain``): display names would only add places for mistakes."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an address must be one line")
    _, address = parseaddr(value)
    if address != value.strip() or address.count("@") != 1 or not all(address.split("@")):
        raise ValueError(f"{value!r} is not a plain email address (name@example.org)")
    return address


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


def build_message(config: EmailConfig, parcel: Parcel) -> EmailMessage:
    """The whole message, identical on every attempt (fixed Date and Message-ID)."""
    header = parcel.header
    filename = f"{parcel.report_id}{EXTENSION}"
    sent = datetime.strptime(header.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
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
        message = build_message(config, parcel)
        password = read_secret_file(config.password_file, "SMTP password") if config.password_file else None
        where = f"smtp {config.host}:{config.effective_port}"
        try:
            refused = self._send(message, password)
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
            names = ", ".join(sorted(refused))
            raise _smtp_failure(worst, f"recipient(s) refused: {names}", where, "partly delivered")
        return f"{where}: accepted for {', '.join(config.to)} message-id {message['Message-ID']}"

    def _send(self, message: EmailMessage, password: str | None) -> dict[str, tuple[int, bytes]]:
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
            return smtp.send_message(message, from_addr=config.sender, to_addrs=config.to)


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
