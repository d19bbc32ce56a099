"""Live scanning for the station's screens: the `scanner` thread decodes camera frames while a screen polls
for codes, and stops SCAN_LINGER seconds after the last poll. Only the latest hit is kept, in memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiosk.hardware.camera import CameraUnavailable
from kiosk.scan.decode import Scanner
from kiosk.scan.payload import Identity, parse_payload

if TYPE_CHECKING:
    from kiosk.app.runtime import StationRuntime

SCAN_INTERVAL = 0.08  # seconds between decodes while a screen scans (decode itself is ~10-40 ms)
SCAN_LINGER = 2.0  # keep scanning this long after the last poll


@dataclass
class ScanHit:
    seq: int
    at: float
    format: str
    identity: Identity | None = field(repr=False)
    text: str = field(repr=False)


class ScanService:
    """Decodes live frames while someone is polling for them; keeps only the latest hit, in memory."""

    def __init__(self, runtime: StationRuntime) -> None:
        self._runtime = runtime
        self._scanner = Scanner()
        self._lock = threading.Lock()
        self._wanted_until = 0.0
        self._thread: threading.Thread | None = None
        self._latest: ScanHit | None = None
        self._seq = 0
        self.error: str | None = None
        self.last_ms = 0.0
        self._stop = threading.Event()

    def want(self) -> None:
        """Called by each poll: scan for the next SCAN_LINGER seconds."""
        with self._lock:
            self._wanted_until = time.monotonic() + SCAN_LINGER
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="scanner", daemon=True)
                self._thread.start()

    def latest(self, after: int = 0, max_age: float = 3.0) -> ScanHit | None:
        hit = self._latest
        if hit is None or hit.seq <= after or time.monotonic() - hit.at > max_age:
            return None
        return hit

    def clear(self) -> None:
        self._latest = None

    @property
    def seq(self) -> int:
        return self._seq

    def feed_text(self, text: str, symbology: str | None = None) -> Identity | None:
        return parse_payload(text, symbology=symbology, rules=self._runtime.config.scan_rule)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._wanted_until:
            camera = self._runtime.camera
            if camera is None:
                self.error = self._runtime.camera_error
                time.sleep(0.5)
                continue
            try:
                frame = camera.frame_gray()
            except CameraUnavailable as exc:
                self.error = str(exc)
                time.sleep(0.5)
                continue
            self.error = None
            result = self._scanner.scan(frame)
            self.last_ms = result.ms
            for code in result.codes:
                identity = parse_payload(
                    code.text, gs1=code.gs1, symbology=code.format, rules=self._runtime.config.scan_rule
                )
                self._seq += 1
                self._latest = ScanHit(self._seq, time.monotonic(), code.format, identity, code.text)
                break
            time.sleep(SCAN_INTERVAL)
