"""Raspberry Pi camera modules (v2, v3 with autofocus, HQ) through picamera2.

Strategy (docs/hardware.md): one still configuration for the whole session, a full-resolution `main`
stream and a preview-size `lores` stream. A single capture thread takes every completed request, keeps the
lores frame for preview and scanning, and when a still is wanted copies `main` out of the same request. The
camera never changes mode, so the preview never stops, and picamera2's rule that modes cannot switch while
an encoder runs never arises (we run no encoder: JPEG comes from OpenCV, on our own copy of the pixels).
The cost is a lower sensor frame rate (the full-resolution mode: ~10 fps on the HQ camera, ~14 on the v3),
which is plenty for a preview and a scanner.

Autofocus (v3): continuous while previewing; before a still we trigger an auto cycle and take the first
request whose metadata reports Focused (or Failed, or after a timeout), still without pausing the preview.

picamera2 and libcamera come from apt (python3-picamera2) and are imported only when this backend is used,
so the station installs and tests run anywhere.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import numpy as np

from kiosk.hardware.camera import (
    Camera,
    CameraConfig,
    CameraInfo,
    CameraLock,
    CameraUnavailable,
    encode_jpeg,
    rotate,
    rotated_size,
)

AF_TIMEOUT = 2.0  # seconds; a v3 focuses in ~0.3-1 s, and a blurred photo beats a hung button
STILL_TIMEOUT = 6.0
FIRST_FRAME_TIMEOUT = 5.0


def camera_present(camera_num: int = 0) -> bool:
    try:
        from picamera2 import Picamera2
    except ImportError:
        return False
    try:
        return len(Picamera2.global_camera_info()) > camera_num
    except Exception:  # libcamera can fail in many ways when no camera is attached
        return False


class _StillJob:
    def __init__(self, autofocus: bool) -> None:
        self.autofocus = autofocus
        self.deadline = time.monotonic() + AF_TIMEOUT
        self.scanning_seen = False
        self.done = threading.Event()
        self.array: np.ndarray | None = None
        self.error: str | None = None


class Picamera2Camera(Camera):
    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self._lock = CameraLock(config.lock_file)
        self._picam: Any = None
        self._controls: Any = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._frame_lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._frame_ready = threading.Event()
        self._job: _StillJob | None = None
        self._job_lock = threading.Lock()  # one still at a time
        self.info = CameraInfo(
            "picamera2", "unknown", (0, 0), rotated_size(config.preview_size, config.rotation), False
        )

    def start(self) -> None:
        try:
            from libcamera import controls
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraUnavailable(
                "picamera2 is not installed (apt install python3-picamera2; "
                "the venv needs --system-site-packages)"
            ) from exc
        self._controls = controls
        self._lock.acquire()
        try:
            self._picam = Picamera2(self.config.camera_num)
        except (RuntimeError, IndexError) as exc:
            self._lock.release()
            raise CameraUnavailable(
                f"the Pi camera could not be opened ({exc}); is it connected and enabled?"
            ) from exc
        try:
            self._configure_and_start()
        except Exception as exc:
            self._close()
            raise CameraUnavailable(f"the Pi camera failed to start: {exc}") from exc
        self._running.set()
        self._thread = threading.Thread(target=self._loop, name="picamera2-capture", daemon=True)
        self._thread.start()
        if not self._frame_ready.wait(FIRST_FRAME_TIMEOUT):
            self.stop()
            raise CameraUnavailable("the Pi camera started but delivered no frames")

    def _configure_and_start(self) -> None:
        picam = self._picam
        still = self.config.still_size or tuple(picam.sensor_resolution)
        cfg = picam.create_still_configuration(
            main={"size": still, "format": "RGB888"},  # libcamera's RGB888 is BGR in memory: OpenCV's order
            lores={"size": tuple(self.config.preview_size), "format": "YUV420"},
            buffer_count=3,  # one being filled, one in our hands, one spare: the preview never starves
            display=None,
        )
        picam.configure(cfg)
        self._autofocus = "AfMode" in picam.camera_controls
        if self._autofocus:
            picam.set_controls({"AfMode": self._controls.AfModeEnum.Continuous})
        picam.start()
        model = str(picam.camera_properties.get("Model", "Raspberry Pi camera"))
        self.info = CameraInfo(
            "picamera2",
            model,
            rotated_size((int(still[0]), int(still[1])), self.config.rotation),
            rotated_size(self.config.preview_size, self.config.rotation),
            self._autofocus,
        )

    def _loop(self) -> None:
        while self._running.is_set():
            try:
                request = self._picam.capture_request()
            except Exception:  # camera unplugged or stopping: end the loop, readers then time out
                break
            try:
                lores = request.make_array("lores")
                frame = rotate(cv2.cvtColor(lores, cv2.COLOR_YUV2BGR_I420), self.config.rotation)
                with self._frame_lock:
                    self._frame = frame
                self._frame_ready.set()
                job = self._job
                if job is not None and self._still_ready(job, request):
                    job.array = request.make_array("main")  # a copy: the request goes back at once
                    self._job = None
                    job.done.set()
            except Exception as exc:
                if (job := self._job) is not None:
                    job.error, self._job = str(exc), None
                    job.done.set()
            finally:
                request.release()

    def _still_ready(self, job: _StillJob, request: Any) -> bool:
        if not job.autofocus:
            return True
        state = request.get_metadata().get("AfState")
        states = self._controls.AfStateEnum
        if state == states.Scanning:
            job.scanning_seen = True
            return time.monotonic() > job.deadline
        # the first frames after the trigger may still report the previous cycle's result
        settled = state in (states.Focused, states.Failed) and job.scanning_seen
        return settled or time.monotonic() > job.deadline

    def frame_array(self) -> np.ndarray:
        with self._frame_lock:
            if self._frame is None or not self._running.is_set():
                raise CameraUnavailable("the camera is not running")
            return self._frame.copy()

    def capture_still(self) -> bytes:
        if not self._running.is_set():
            raise CameraUnavailable("the camera is not running")
        with self._job_lock:
            job = _StillJob(self.config.autofocus and self._autofocus)
            if job.autofocus:
                af = self._controls
                self._picam.set_controls({"AfMode": af.AfModeEnum.Auto, "AfTrigger": af.AfTriggerEnum.Start})
            self._job = job
            finished = job.done.wait(STILL_TIMEOUT)
            if job.autofocus:
                self._picam.set_controls({"AfMode": self._controls.AfModeEnum.Continuous})
            if not finished or job.array is None:
                self._job = None
                raise CameraUnavailable(f"the camera did not deliver a photo ({job.error or 'timed out'})")
        return encode_jpeg(rotate(job.array, self.config.rotation), self.config.jpeg_quality)

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=3)
            self._thread = None
        self._close()

    def _close(self) -> None:
        if self._picam is not None:
            try:
                self._picam.stop()
            finally:
                self._picam.close()
                self._picam = None
        self._lock.release()
        with self._frame_lock:
            self._frame = None
        self._frame_ready.clear()
