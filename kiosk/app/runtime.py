"""The running station: one camera, the GPIO buttons, the scanner, the outbox worker and the session.

Threads, and what each may touch:
- request threads (waitress): the session, preview frames (camera.preview_jpeg), the send path;
- `capture` (one thread): drains button events (GPIO and the on-screen button alike) and is the only code that
  calls camera.capture_still(); GPIO callback threads only put events on the queue;
- `scanner`: decodes live frames while a screen asks for codes (stops 2 s after the last ask);
- `reaper`: wipes the session after the idle timeout;
- the outbox worker (kiosk.outbox.worker) delivers sealed files.

Nothing here knows about HTTP.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from kiosk import audit_shipping
from kiosk import station as station_wiring
from kiosk.app.events import StationEvents
from kiosk.app.i18n import _
from kiosk.app.live_scan import ScanService
from kiosk.config import Config
from kiosk.destinations.email import RecipientProblem
from kiosk.hardware.camera import Camera, CameraUnavailable, open_camera
from kiosk.hardware.camera_mock import FOLLOW_SCREENS, SCREEN_SCENES, MockCamera
from kiosk.hardware.gpio import ButtonEvent, EventKind, Gpio, GpioUnavailable, LedState
from kiosk.keyring import KeyringError
from kiosk.outbox.store import Outbox
from kiosk.outbox.worker import OutboxStatus, OutboxWorker
from kiosk.pipeline import PhotoInput, SealError, assemble_report, seal_and_queue
from kiosk.report.jpeg_strip import InvalidPhoto, prepare_photo
from kiosk.report.model import Patient, Station, utc_now
from kiosk.sealing.passphrase import WeakPassphrase
from kiosk.session import CapturedPhoto, Session, SessionManager

log = logging.getLogger(__name__)

THUMB_SIZE = (480, 360)


def thumbnail(jpeg: bytes, size: tuple[int, int] = THUMB_SIZE) -> bytes:
    """A small JPEG for the review strip, in memory; the DCT-domain draft keeps a 12 MP decode cheap."""
    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("RGB", (size[0], size[1]))
        small = image.convert("RGB")
        small.thumbnail(size)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
        return out.getvalue()


@dataclass
class TestStill:
    future: Future[TestStillResult] = field(default_factory=Future)


@dataclass(frozen=True)
class TestStillResult:
    preview: bytes = field(repr=False)
    size: tuple[int, int]
    bytes: int
    seconds: float


class SendFailed(Exception):
    """Sealing failed; `message` is for the nurse, the session is kept for a retry."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message, self.detail = message, detail


@dataclass(frozen=True)
class SendResult:
    report_id: str
    destinations: tuple[str, ...]
    seconds: float


class StationRuntime:
    def __init__(
        self,
        config: Config,
        *,
        camera: Camera | None = None,
        pin_factory: Any = None,
        start_worker: bool = True,
    ) -> None:
        self.config = config
        data_dir = config.station.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(data_dir)  # creates the schema the events share
        self.events = StationEvents(data_dir)
        self.sessions = SessionManager(config.ui.idle_timeout, on_wipe=self._on_wipe)
        self.button_events: queue.Queue[ButtonEvent | TestStill] = queue.Queue(maxsize=64)
        self.scanner = ScanService(self)
        self.camera: Camera | None = camera
        self.camera_error: str | None = None
        self.gpio: Gpio | None = None
        self.gpio_error: str | None = None
        self._pin_factory = pin_factory
        self._start_worker = start_worker
        self.worker: OutboxWorker | None = None
        self.outbox_status: OutboxStatus | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.capture_times: list[float] = []  # seconds from button to still ready (bench)
        self.last_send_seconds = 0.0

    # --- life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._open_camera()
        self._open_gpio()
        if self._start_worker:
            self.start_worker()
        for name, target in (("capture", self._capture_loop), ("reaper", self._reaper_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._set_led(LedState.READY)

    def start_worker(self) -> None:
        """(Re)start the outbox worker with freshly built destinations (e.g. after enrollment)."""
        if self.worker is not None:
            self.worker.stop()
        data_dir = self.config.station.data_dir
        self.worker = OutboxWorker(
            data_dir,
            station_wiring.destinations(self.config),
            on_status=self._on_outbox_status,
            after_round=audit_shipping.shipper(data_dir, station_wiring.keyserver_client(self.config)),
        )
        self.worker.start()

    def stop(self) -> None:
        self._stop.set()
        self.scanner.stop()
        current = self.sessions.current
        if current is not None:
            self.sessions.end(current, "shutdown")
        for thread in self._threads:
            thread.join(2.0)
        if self.worker is not None:
            self.worker.stop()
        if self.gpio is not None:
            self.gpio.set_status(LedState.OFF)
            self.gpio.close()
        if self.camera is not None:
            with contextlib.suppress(Exception):
                self.camera.stop()
        self.outbox.close()
        self.events.close()

    def _open_camera(self) -> None:
        try:
            if self.camera is None:
                self.camera = open_camera(self.config.camera)
            self.camera.start()
            self.camera_error = None
        except CameraUnavailable as exc:
            self.camera, self.camera_error = None, str(exc)
            log.warning("camera unavailable: %s", exc)

    def stage_mock_scene(self, screen: str) -> None:
        """With the mock camera in "follow-screens" mode, show what a real camera would see on this screen."""
        camera = self.camera
        if isinstance(camera, MockCamera) and self.config.camera.mock_scene == FOLLOW_SCREENS:
            camera.show(SCREEN_SCENES[screen])

    def reopen_camera(self) -> None:
        if self.camera is not None:
            with contextlib.suppress(Exception):
                self.camera.stop()
            self.camera = None
        self._open_camera()

    def _open_gpio(self) -> None:
        cfg = self.config.gpio
        if cfg is None or not cfg.enabled:
            return
        try:
            self.gpio = Gpio(cfg, events=self.button_events, pin_factory=self._pin_factory)
        except GpioUnavailable as exc:
            self.gpio_error = str(exc)
            log.warning("%s", exc)

    def _set_led(self, state: LedState) -> None:
        if self.gpio is not None:
            self.gpio.set_status(state)

    def _on_outbox_status(self, status: OutboxStatus) -> None:
        self.outbox_status = status
        self._set_led(LedState.OUTBOX_STUCK if status.stuck else LedState.READY)

    def _on_wipe(self, session: Session, reason: str, details: dict[str, Any]) -> None:
        self.scanner.clear()
        actor = details.pop("staff_id", None) or "station"
        self.events.record("session-ended", actor=actor, reason=reason, **details)

    # --- capture -------------------------------------------------------------------------------------
    def request_capture(self) -> None:
        """The on-screen button: the same queue as the GPIO button, so one thread owns the camera."""
        with contextlib.suppress(queue.Full):
            self.button_events.put_nowait(ButtonEvent(EventKind.CAPTURE, time.monotonic()))

    def request_test_still(self) -> Future[TestStillResult]:
        """Admin camera test: a still taken by the capture thread, like every other still."""
        request = TestStill()
        self.button_events.put(request, timeout=2)
        return request.future

    def _test_still(self, request: TestStill) -> None:
        start = time.perf_counter()
        try:
            if self.camera is None:
                raise CameraUnavailable(self.camera_error or "no camera")
            still = self.camera.capture_still()
            with Image.open(io.BytesIO(still)) as image:
                size = image.size
            request.future.set_result(
                TestStillResult(thumbnail(still, (960, 720)), size, len(still), time.perf_counter() - start)
            )
        except Exception as exc:  # the admin screen shows whatever went wrong
            request.future.set_exception(exc)

    def _capture_loop(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.button_events.get(timeout=0.25)
            except queue.Empty:
                continue
            if isinstance(event, TestStill):
                self._test_still(event)
                continue
            session = self.sessions.current
            if event.kind is EventKind.CANCEL:
                if session is not None:  # holding the button or pedal: the same wipe as Cancel on screen
                    self.sessions.end(session, "cancelled", via="button-hold")
                continue
            if event.kind is EventKind.SECOND:
                if session is not None:
                    self.second_button(session)
                continue
            if event.kind is not EventKind.CAPTURE:
                continue
            if session is None or not session.may_capture:
                continue  # no photo before the patient is confirmed and consent recorded
            try:
                self.capture(session, event.at)
            except Exception:  # the loop must survive anything one capture does
                log.exception("capture failed")

    def second_button(self, session: Session) -> bool:
        """The second button (or pedal) means "done taking photos": the photos screen moves on to review.

        Only with a photo to review, and nowhere else: identifying the patient, recording consent and
        Send each need a person reading the screen, so a press there does nothing. The press arrives here
        after any capture queued before it (one thread takes both), so the last photo is already in.
        The request is a counter on the session: the photos page acts on a rise it sees in its long poll,
        and a page rendered later starts from the new value, so a stale press never moves anyone on.
        """
        if not session.may_capture or not any(p.state == "ready" for p in session.photos):
            return False
        session.touch()
        session.next_step_requests += 1
        session.bump()
        return True

    def capture(self, session: Session, pressed_at: float | None = None) -> CapturedPhoto | None:
        camera = self.camera
        if camera is None:
            session.last_error = "camera"
            session.bump()
            return None
        pressed_at = pressed_at or time.monotonic()
        self._set_led(LedState.BUSY)
        try:
            quick = thumbnail(camera.preview_jpeg())  # instant feedback from the frame on screen
        except CameraUnavailable:
            session.last_error = "camera"
            session.bump()
            self._set_led(LedState.ERROR)
            return None
        photo = CapturedPhoto(id=session.new_photo_id(), captured_at=utc_now(), thumbnail=quick)
        session.add_photo(photo)
        session.touch()
        try:
            still = camera.capture_still()
            clean = prepare_photo(still, "the photo")
            photo.thumbnail = thumbnail(clean.jpeg)
            photo.jpeg, photo.width, photo.height = clean.jpeg, clean.width, clean.height
            photo.state = "ready"
            if self.gpio is not None:
                self.gpio.beep()
        except (CameraUnavailable, InvalidPhoto) as exc:
            photo.state, photo.error = "failed", str(exc)
            session.last_error = "camera"
            self._set_led(LedState.ERROR)
            if self.gpio is not None:
                self.gpio.beep(ok=False)
        else:
            self._set_led(LedState.READY)
        if not session.active:  # wiped while the still was being taken
            photo.jpeg = photo.thumbnail = b""
            return None
        self.capture_times.append(time.monotonic() - pressed_at)
        del self.capture_times[:-100]
        session.bump()
        return photo

    # --- idle ----------------------------------------------------------------------------------------
    def _reaper_loop(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                self.sessions.expire_idle()

    # --- send ----------------------------------------------------------------------------------------
    def send(
        self, session: Session, names: list[str], params: Mapping[str, Mapping[str, Any]] | None = None
    ) -> SendResult:
        """assemble_report + seal_and_queue + wake the worker. Raises SendFailed; the session is kept.

        ``params``: per destination, choices made on the Send screen (email recipients), queued with the
        deliveries."""
        start = time.perf_counter()
        if not names:
            raise SendFailed(_("Choose where to send the report."))
        deadline = time.monotonic() + 15
        while any(p.state == "capturing" for p in session.photos) and time.monotonic() < deadline:
            session.wait_for_change(session.version, 0.2)
        ready = [p for p in session.photos if p.state == "ready"]
        if not ready:
            raise SendFailed(_("Take at least one photo first."))
        assert session.staff is not None and session.patient is not None and session.consent is not None
        try:
            chosen = [self.config.destination_named(name) for name in names]
        except ValueError as exc:
            raise SendFailed(_("That destination is no longer configured — call IT."), str(exc)) from exc
        try:
            report = assemble_report(
                station=Station(
                    id=self.config.station.id,
                    software_version=self.config.station.software_version,
                    device=self.camera.info.model if self.camera is not None else None,
                ),
                staff=session.staff,
                patient=session.patient,
                consent=session.consent,
                photos=[
                    PhotoInput(
                        data=p.jpeg,
                        name=f"photo {i}",
                        captured_at=p.captured_at,
                        body_site=p.body_site,
                        notes=p.notes,
                    )
                    for i, p in enumerate(ready, start=1)
                ],
            )
        except (InvalidPhoto, ValueError) as exc:
            raise SendFailed(_("The report could not be put together."), _no_phi(exc)) from exc
        with self._send_lock:
            try:
                seal_and_queue(report, chosen, self.config, self.outbox, params)
            except SealError as exc:
                message, detail = plain_seal_error(exc)
                self.events.record(
                    "send-failed", actor=session.staff.id, report_id=report.report_id, reason=message
                )
                raise SendFailed(message, detail) from exc
        if self.worker is not None:
            self.worker.wake()
        seconds = time.perf_counter() - start
        self.last_send_seconds = seconds
        self.events.record(
            "report-sent", actor=session.staff.id, report_id=report.report_id, destinations=sorted(names)
        )
        log.info("report %s sealed and queued in %.0f ms", report.report_id, seconds * 1000)
        return SendResult(report.report_id, tuple(names), seconds)

    def confirm_patient(self, session: Session, confirmed_by: str) -> Patient:
        pending = session.pending
        assert pending is not None
        patient = Patient(
            mrn=pending.mrn,
            issuer=pending.issuer,
            name=pending.name,
            birth_date=pending.birth_date,
            id_source=pending.source,
            barcode_format=pending.barcode_format,
            confirmed_by=confirmed_by,  # type: ignore[arg-type]
        )
        session.patient, session.pending = patient, None
        return patient


def _no_phi(exc: BaseException) -> str:
    """Validation messages can quote input; keep only the field names for the screen and the log."""
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def plain_seal_error(exc: SealError) -> tuple[str, str]:
    """(what the nurse reads, what IT needs) for a failed seal."""
    cause = exc.__cause__
    kept = _("Nothing was sent; your photos are kept.")
    if isinstance(cause, RecipientProblem):  # the Send screen checks first; this is the backstop
        return _("Check the email recipients.") + " " + kept, ""
    if isinstance(cause, KeyringError):
        return _("Station not enrolled — call IT.") + " " + kept, str(cause)
    if isinstance(cause, OSError) and cause.errno == 28:
        return _("Disk full — call IT.") + " " + kept, str(exc)
    if isinstance(cause, WeakPassphrase):
        return _("A destination's key file is not set up safely — call IT.") + " " + kept, str(cause)
    return _("The report could not be sealed — call IT.") + " " + kept, str(exc)
