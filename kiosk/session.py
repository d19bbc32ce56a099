"""The station's one patient session, in process memory only.

Everything that identifies a patient (identifiers, consent, signature, photos and their thumbnails) lives
in a `Session` object and nowhere else: nothing is written to disk, logged or put in a cookie. Every way a
session ends (Send, Cancel, idle timeout, an error, sign-out, withdrawn consent) goes through the one
`Session.wipe()`, which drops every reference and records the reason (no patient data) for the audit.

The touchscreen is one screen used by one person at a time, so `SessionManager` holds at most one active
session: signing in replaces (and wipes) whatever was there. The browser only holds the session's random id.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kiosk.report.model import BodySite, Consent, Patient, Staff, utc_now

log = logging.getLogger(__name__)

PhotoState = Literal["capturing", "ready", "failed"]


@dataclass
class CapturedPhoto:
    """One photo: a quick thumbnail first, then the full still, stripped and ready to seal."""

    id: str
    captured_at: datetime
    thumbnail: bytes = field(repr=False)
    state: PhotoState = "capturing"
    jpeg: bytes = field(default=b"", repr=False)  # metadata already stripped (prepare_photo)
    width: int = 0
    height: int = 0
    body_site: BodySite | None = None
    notes: str = field(default="", repr=False)
    error: str = ""


@dataclass
class PendingPatient:
    """An identity read from a wristband or typed, waiting for the second-identifier check."""

    mrn: str = field(repr=False)
    source: Literal["barcode", "keyboard-wedge", "manual"]
    issuer: str | None = field(default=None, repr=False)
    name: str | None = field(default=None, repr=False)
    birth_date: str | None = field(default=None, repr=False)
    barcode_format: str | None = None


@dataclass
class ConsentDraft:
    """Answers collected screen by screen until they make a valid `Consent`."""

    consenter: str | None = None
    consenter_name: str = field(default="", repr=False)
    method: str | None = None
    purposes: dict[str, bool] = field(default_factory=dict)
    exception_reason: str = field(default="", repr=False)
    signature_png: bytes | None = field(default=None, repr=False)


@dataclass
class RecipientChoice:
    """Email recipients picked on the Send screen for one destination: personal data (not patient data),
    kept in the session and wiped with it."""

    chosen: list[str] = field(repr=False)
    typed: list[str] = field(default_factory=list, repr=False)  # addresses typed in, offered as entries


class Session:
    """Staff member, patient, consent and photos of one report. Holds plaintext: memory only."""

    def __init__(self, staff: Staff, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = secrets.token_urlsafe(24)
        self.staff: Staff | None = staff
        self.pending: PendingPatient | None = None
        self.patient: Patient | None = None
        self.consent_draft = ConsentDraft()
        self.consent: Consent | None = None
        self.photos: list[CapturedPhoto] = []
        self.current_site: BodySite | None = None
        self.retake_index: int | None = None
        self.destinations: list[str] = []
        self.recipients: dict[str, RecipientChoice] = {}  # Send screen: email destination name -> choice
        self.last_error: str | None = None
        self.started = clock()
        self._clock = clock
        self.last_activity = clock()
        self.version = 0  # bumped on every photo change, so pages can long-poll for it
        self.next_step_requests = 0  # second-button presses the photos screen acts on (runtime)
        self.changed = threading.Condition()
        self.wiped: str | None = None
        self._photo_seq = 0

    # --- state ---------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.wiped is None

    @property
    def patient_confirmed(self) -> bool:
        return self.patient is not None

    @property
    def may_capture(self) -> bool:
        """Photos only for a confirmed patient with recorded consent (enforced server-side)."""
        return self.active and self.patient is not None and self.consent is not None

    def touch(self) -> None:
        self.last_activity = self._clock()

    def idle_seconds(self) -> float:
        return self._clock() - self.last_activity

    def bump(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def wait_for_change(self, version: int, timeout: float) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.version != version or not self.active, timeout)
            return self.version

    # --- photos --------------------------------------------------------------------------------------
    def new_photo_id(self) -> str:
        self._photo_seq += 1
        return f"p{self._photo_seq}-{secrets.token_hex(4)}"

    def add_photo(self, photo: CapturedPhoto) -> None:
        if photo.body_site is None:
            photo.body_site = self.current_site
        if self.retake_index is not None and self.retake_index <= len(self.photos):
            self.photos.insert(self.retake_index, photo)
            self.retake_index = None
        else:
            self.photos.append(photo)
        self.bump()

    def photo(self, photo_id: str) -> CapturedPhoto | None:
        return next((p for p in self.photos if p.id == photo_id), None)

    def delete_photo(self, photo_id: str) -> int | None:
        for index, photo in enumerate(self.photos):
            if photo.id == photo_id:
                del self.photos[index]
                self.bump()
                return index
        return None

    # --- the one exit --------------------------------------------------------------------------------
    def wipe(self, reason: str) -> None:
        """Drop every reference to patient data. Idempotent; `reason` is recorded (it carries no PHI)."""
        if self.wiped is not None:
            return
        self.staff = None
        self.pending = None
        self.patient = None
        self.consent_draft = ConsentDraft()
        self.consent = None
        for photo in self.photos:
            photo.jpeg = b""
            photo.thumbnail = b""
            photo.notes = ""
        self.photos = []
        self.current_site = None
        self.destinations = []
        for choice in self.recipients.values():
            choice.chosen.clear()
            choice.typed.clear()
        self.recipients = {}
        self.last_error = None
        self.wiped = reason
        self.bump()


@dataclass(frozen=True)
class EndedSession:
    """What the confirmation screen may show after a wipe: no patient data."""

    reason: str
    report_id: str | None = None
    photos: int = 0
    destinations: tuple[str, ...] = ()
    at: datetime = field(default_factory=utc_now)


class SessionManager:
    """At most one active session; a wipe hook records every end in the station audit."""

    def __init__(
        self,
        idle_timeout: float,
        on_wipe: Callable[[Session, str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout = idle_timeout
        self._on_wipe = on_wipe
        self._clock = clock
        self._lock = threading.RLock()
        self._current: Session | None = None
        self._ended: dict[str, EndedSession] = {}

    def start(self, staff: Staff) -> Session:
        with self._lock:
            if self._current is not None:
                self.end(self._current, "replaced")
            session = Session(staff, self._clock)
            self._current = session
            return session

    def get(self, session_id: str | None) -> Session | None:
        with self._lock:
            current = self._current
            if current is not None and session_id and secrets.compare_digest(current.id, session_id):
                return current if current.active else None
            return None

    @property
    def current(self) -> Session | None:
        return self._current

    def end(self, session: Session, reason: str, **details: Any) -> None:
        """The one exit path: wipe, forget, audit."""
        with self._lock:
            if not session.active:
                return
            staff_id = session.staff.id if session.staff else None
            photos = len(session.photos)
            session.wipe(reason)
            if self._current is session:
                self._current = None
            self._ended[session.id] = EndedSession(
                reason,
                details.get("report_id"),
                photos,
                tuple(details.get("destinations", ())),
            )
            while len(self._ended) > 8:
                self._ended.pop(next(iter(self._ended)))
        log.info("session ended (%s)", reason)
        if self._on_wipe is not None:
            self._on_wipe(session, reason, {"staff_id": staff_id, "photos": photos, **details})

    def ended(self, session_id: str | None) -> EndedSession | None:
        return self._ended.get(session_id or "")

    def expire_idle(self) -> Session | None:
        """Wipe the current session if it has been idle too long; returns it if so."""
        with self._lock:
            session = self._current
            if session is None or session.idle_seconds() < self.idle_timeout:
                return None
            self.end(session, "idle-timeout")
            return session

    def remaining(self, session: Session) -> float:
        return max(0.0, self.idle_timeout - session.idle_seconds())
