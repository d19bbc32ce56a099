"""The one camera interface, its configuration, and the choice of backend.

Backends: picamera2 (Pi camera modules), OpenCV/V4L2 (USB webcams) and a mock (synthetic scenes or a folder
of images) for tests and the demo. Every backend gives the same three things:

- a live low-resolution frame (`frame_array()` / `frame_gray()`) for the barcode scanner,
- the same frame as JPEG (`preview_jpeg()`) for the on-screen preview,
- a full-resolution still (`capture_still()`) as JPEG bytes, already upright: the station is mounted in
  a fixed orientation, so we rotate pixels rather than rely on an EXIF tag that the report pipeline strips.

A camera that is missing or held by another process raises `CameraUnavailable` with a plain message; callers
show it as a screen (UI) or a failed check (`kiosk doctor`), never as a crash.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Size = tuple[int, int]
PREVIEW_JPEG_QUALITY = 75  # preview frames are looked at for a fraction of a second; keep them small


class CameraUnavailable(RuntimeError):
    """The camera is missing, busy or failed; the message is meant for a person."""


class CameraConfig(BaseModel):
    """`[camera]` in kiosk.toml."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "picamera2", "opencv", "mock"] = Field(
        "auto", description="auto: picamera2 if a Pi camera is present, else a V4L2 device; never the mock"
    )
    device: str = Field("/dev/video0", description="OpenCV backend: V4L2 device path")
    camera_num: int = Field(0, ge=0, description="picamera2 backend: which attached camera")
    preview_size: Size = Field((1280, 720), description="live stream for preview and scanning (w, h)")
    preview_fps: float = Field(15.0, gt=0, le=60)
    still_size: Size | None = Field(None, description="None: the sensor's full resolution")
    rotation: Literal[0, 90, 180, 270] = Field(0, description="clockwise turn that makes images upright")
    jpeg_quality: int = Field(92, ge=50, le=100)
    autofocus: bool = Field(True, description="run an autofocus cycle before each still when supported")
    lock_file: Path | None = Field(None, description="default: /run/kiosk/camera.lock or the temp dir")
    mock_scene: str = Field(
        "wristband-datamatrix",
        description='mock: a scene, or "follow-screens" to match the station\'s screen',
    )
    mock_folder: Path | None = Field(None, description="mock: play back these images instead of scenes")


@dataclass(frozen=True)
class CameraInfo:
    backend: str
    model: str
    still_size: Size
    preview_size: Size
    autofocus: bool


class Camera(abc.ABC):
    """A started camera delivers frames until `stop()`; use it as a context manager."""

    info: CameraInfo

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def frame_array(self) -> np.ndarray:
        """Latest live frame, BGR uint8 at preview size, upright. A copy the caller may keep."""

    @abc.abstractmethod
    def capture_still(self) -> bytes:
        """A full-resolution upright JPEG. The live stream keeps running."""

    def frame_gray(self) -> np.ndarray:
        return cv2.cvtColor(self.frame_array(), cv2.COLOR_BGR2GRAY)

    def preview_jpeg(self) -> bytes:
        return encode_jpeg(self.frame_array(), PREVIEW_JPEG_QUALITY)

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - imencode fails only on invalid arrays
        raise CameraUnavailable("could not encode a camera frame as JPEG")
    return buf.tobytes()


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """Turn pixels clockwise; libcamera can only flip, and EXIF orientation is stripped downstream."""
    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    return cv2.rotate(image, codes[degrees]) if degrees in codes else image


def rotated_size(size: Size, degrees: int) -> Size:
    return (size[1], size[0]) if degrees in (90, 270) else size


class CameraLock:
    """Exactly one process owns the camera: an exclusive, non-blocking flock on a file in the run dir.

    flock (not POSIX fcntl locks) so that two opens inside one process also conflict, and the kernel drops
    the lock when the process dies, so a crash never leaves the camera "in use".
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_lock_path()
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise CameraUnavailable(f"the camera is in use by another process{who}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> CameraLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def default_lock_path() -> Path:
    run_dir = Path("/run/kiosk")
    if run_dir.is_dir() and os.access(run_dir, os.W_OK):
        return run_dir / "camera.lock"
    return Path(tempfile.gettempdir()) / "kiosk-camera.lock"


def open_camera(config: CameraConfig) -> Camera:
    """Build (not start) the configured backend. `auto` never falls back to the mock."""
    if config.backend == "mock":
        from kiosk.hardware.camera_mock import MockCamera

        return MockCamera.from_config(config)
    if config.backend == "picamera2":
        from kiosk.hardware.camera_picamera2 import Picamera2Camera

        return Picamera2Camera(config)
    if config.backend == "opencv":
        from kiosk.hardware.camera_opencv import OpenCVCamera

        return OpenCVCamera(config)
    return _auto(config)


def _auto(config: CameraConfig) -> Camera:
    from kiosk.hardware import camera_opencv, camera_picamera2

    if camera_picamera2.camera_present(config.camera_num):
        return camera_picamera2.Picamera2Camera(config)
    if camera_opencv.device_opens(config.device):
        return camera_opencv.OpenCVCamera(config)
    raise CameraUnavailable(
        f"no camera found: no Raspberry Pi camera module detected and {config.device} does not open "
        "(check the ribbon cable or USB connection)"
    )
