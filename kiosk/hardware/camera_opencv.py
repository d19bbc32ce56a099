"""USB webcams through OpenCV's V4L2 backend.

A thread grabs frames continuously (a webcam's internal queue would otherwise hand us stale frames) and
keeps the latest, downscaled to the preview size for the preview and the scanner. Webcams cannot deliver a
different resolution without reopening, so the device runs at the still resolution (the largest it offers
unless configured) and a still is simply the latest full frame: no mode switch, no preview gap.
"""

from __future__ import annotations

import os
import threading
import time

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

LARGEST = (10000, 10000)  # ask for more than any webcam has; V4L2 picks the largest mode it supports
FIRST_FRAME_TIMEOUT = 5.0


def _device_index(device: str) -> int | str:
    name = os.path.basename(device)
    return int(name.removeprefix("video")) if name.startswith("video") and name[5:].isdigit() else device


def device_opens(device: str) -> bool:
    if not os.path.exists(device):
        return False
    cap = cv2.VideoCapture(_device_index(device), cv2.CAP_V4L2)
    try:
        return bool(cap.isOpened())
    finally:
        cap.release()


class OpenCVCamera(Camera):
    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self._lock = CameraLock(config.lock_file)
        self._cap: cv2.VideoCapture | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._frame_lock = threading.Lock()
        self._full: np.ndarray | None = None
        self._frame_ready = threading.Event()
        self.info = CameraInfo("opencv", config.device, (0, 0), config.preview_size, False)

    def start(self) -> None:
        device = self.config.device
        if not os.path.exists(device):
            raise CameraUnavailable(f"no camera at {device}: is the USB camera plugged in?")
        self._lock.acquire()
        cap = cv2.VideoCapture(_device_index(device), cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            self._lock.release()
            raise CameraUnavailable(
                f"{device} exists but cannot be opened (in use, or not a video capture device)"
            )
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))  # YUYV at full size is a few fps
        width, height = self.config.still_size or LARGEST
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap
        actual = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.info = CameraInfo(
            "opencv",
            f"USB camera {device}",
            rotated_size(actual, self.config.rotation),
            rotated_size(self.config.preview_size, self.config.rotation),
            False,
        )
        self._running.set()
        self._thread = threading.Thread(target=self._loop, name="opencv-capture", daemon=True)
        self._thread.start()
        if not self._frame_ready.wait(FIRST_FRAME_TIMEOUT):
            self.stop()
            raise CameraUnavailable(f"{device} opened but delivered no frames")

    def _loop(self) -> None:
        failures = 0
        while self._running.is_set() and self._cap is not None:
            ok, frame = self._cap.read()
            if not ok:
                failures += 1
                if failures > 50:  # unplugged: stop, readers get CameraUnavailable
                    self._running.clear()
                    break
                time.sleep(0.02)
                continue
            failures = 0
            with self._frame_lock:
                self._full = frame
            self._frame_ready.set()

    def _latest(self) -> np.ndarray:
        with self._frame_lock:
            if self._full is None or not self._running.is_set():
                raise CameraUnavailable(f"the camera at {self.config.device} is not delivering frames")
            return self._full

    def frame_array(self) -> np.ndarray:
        full = self._latest()
        w, h = self.config.preview_size
        scale = min(w / full.shape[1], h / full.shape[0])
        small = cv2.resize(
            full, (round(full.shape[1] * scale), round(full.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
        return rotate(small, self.config.rotation)

    def capture_still(self) -> bytes:
        return encode_jpeg(rotate(self._latest(), self.config.rotation), self.config.jpeg_quality)

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=3)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._lock.release()
        with self._frame_lock:
            self._full = None
        self._frame_ready.clear()
