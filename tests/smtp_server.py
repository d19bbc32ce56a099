"""A real SMTP server for tests (aiosmtpd on 127.0.0.1, a free port, no TLS): it keeps every accepted
message, and refuses ``nobody@…`` (550) and ``busy@…`` (451) so tests can see refusals.

    with smtp_server() as server:
        ...  # an email destination with host 127.0.0.1, port server.port, security "none"
        (mail,) = server.mailbox.for_report(report_id)
        assert mail.rcpt_tos == ["wound-team@clinic.test"]
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.net import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every accepted message in memory."""

    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("busy@"):
            return "451 4.3.0 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 2.0.0 queued"

    def for_report(self, report_id: str) -> list[Received]:
        return [m for m in self.received if m.message["X-Report-Id"] == report_id]

    def wait_for(self, count: int = 1, timeout: float = 20.0) -> list[Received]:
        """Wait until ``count`` messages arrived (the outbox worker delivers in the background)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox


@contextmanager
def smtp_server(port: int | None = None) -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = port or free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer(port, mailbox)
    finally:
        controller.stop()
