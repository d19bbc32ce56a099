"""The mock camera, shipped with the station like gpiozero's MockFactory: synthetic scenes or a folder of
images, switchable at run time (`camera.show("wristband-datamatrix")`) so tests and the demo can drive it.

Only ever used when configured explicitly (`backend = "mock"`); `auto` never picks it, so a station whose
camera has failed says so instead of showing a pretend picture.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from kiosk.hardware import scenes
from kiosk.hardware.camera import (
    PREVIEW_JPEG_QUALITY,
    Camera,
    CameraConfig,
    CameraInfo,
    CameraUnavailable,
    Size,
    encode_jpeg,
)

DEFAULT_STILL_SIZE: Size = (4056, 3040)  # the Raspberry Pi HQ camera's full resolution
MAX_RENDER_PIXELS = (
    2_100_000  # synthetic stills are drawn at <= ~2 MP and scaled up: realism is not the point
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# `mock_scene = "follow-screens"` (demos): the station shows a badge at sign-in, a wristband on the patient
# screen and a wound on the capture screen, so one can walk through the whole flow with no hardware.
FOLLOW_SCREENS = "follow-screens"
FIRST_SCENE = "staff-badge"
SCREEN_SCENES = {"signin": "staff-badge", "patient": "wristband-datamatrix", "capture": "wound"}


class MockCamera(Camera):
    def __init__(
        self,
        scene: str = "wristband-datamatrix",
        preview_size: Size = (1280, 720),
        still_size: Size = DEFAULT_STILL_SIZE,
        folder: Path | None = None,
        jpeg_quality: int = 92,
        look: scenes.Look | None = None,
    ) -> None:
        self.info = CameraInfo("mock", "synthetic scenes", still_size, preview_size, autofocus=False)
        self._jpeg_quality = jpeg_quality
        self._lock = threading.Lock()
        self._started = False
        self._cache: dict[tuple[str, Size], np.ndarray] = {}
        self._preview_jpeg: bytes | None = None
        self._images = _list_images(folder) if folder is not None else {}
        if folder is not None and not self._images:
            raise CameraUnavailable(f"mock camera: no images in {folder}")
        self._look: scenes.Look | None = look
        self._scene = ""
        self.show(next(iter(self._images)) if self._images else scene, look)
        self.stills_taken = 0

    @classmethod
    def from_config(cls, config: CameraConfig) -> MockCamera:
        return cls(
            scene=FIRST_SCENE if config.mock_scene == FOLLOW_SCREENS else config.mock_scene,
            preview_size=config.preview_size,
            still_size=config.still_size or DEFAULT_STILL_SIZE,
            folder=config.mock_folder,
            jpeg_quality=config.jpeg_quality,
        )

    @property
    def scene(self) -> str:
        return self._scene

    def scenes(self) -> list[str]:
        """What `show()` accepts: image file names when playing a folder, else the synthetic scenes."""
        return list(self._images) if self._images else scenes.scene_names()

    def show(self, scene: str, look: scenes.Look | None = None) -> None:
        """Switch what the camera sees. `look` changes angle, bend, blur... of synthetic scenes."""
        if scene not in self.scenes():
            raise KeyError(f"mock camera has no scene {scene!r} (known: {', '.join(self.scenes())})")
        with self._lock:
            self._scene, self._look = scene, look
            self._cache.clear()
            self._preview_jpeg = None

    def advance(self) -> str:
        """Show the next image of the folder (or the next scene); returns its name."""
        names = self.scenes()
        self.show(names[(names.index(self._scene) + 1) % len(names)] if self._scene in names else names[0])
        return self._scene

    def start(self) -> None:
        self._started = True

    def stop(self) -> None:
        self._started = False

    def _require_started(self) -> None:
        if not self._started:
            raise CameraUnavailable("the camera is not started")

    def _render(self, size: Size) -> np.ndarray:
        key = (self._scene, size)
        frame = self._cache.get(key)
        if frame is None:
            frame = self._draw(size)
            self._cache[key] = frame
        return frame

    def _draw(self, size: Size) -> np.ndarray:
        width, height = size
        if self._images:
            image = cv2.imread(str(self._images[self._scene]), cv2.IMREAD_COLOR)
            if image is None:
                raise CameraUnavailable(f"mock camera: cannot read {self._images[self._scene].name}")
            return _fit(image, size)
        factor = min(1.0, (MAX_RENDER_PIXELS / (width * height)) ** 0.5)
        drawn = scenes.render(self._scene, int(width * factor), int(height * factor), self._look)
        if factor < 1.0:
            drawn = cv2.resize(drawn, size, interpolation=cv2.INTER_LINEAR)
        return drawn

    def frame_array(self) -> np.ndarray:
        self._require_started()
        with self._lock:
            return self._render(self.info.preview_size).copy()

    def preview_jpeg(self) -> bytes:
        self._require_started()
        with self._lock:  # the scene is static between show() calls, so one encode serves every client
            if self._preview_jpeg is None:
                self._preview_jpeg = encode_jpeg(self._render(self.info.preview_size), PREVIEW_JPEG_QUALITY)
            return self._preview_jpeg

    def capture_still(self) -> bytes:
        self._require_started()
        with self._lock:
            image = self._render(self.info.still_size)
            self._cache.pop((self._scene, self.info.still_size), None)  # ~37 MB at 12 MP: don't keep it
        self.stills_taken += 1
        return encode_jpeg(image, self._jpeg_quality)


def _list_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise CameraUnavailable(f"mock camera: {folder} is not a folder")
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _fit(image: np.ndarray, size: Size) -> np.ndarray:
    """Scale and centre-crop to `size`, as a sensor mode crops to its aspect ratio."""
    width, height = size
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    resized = cv2.resize(image, (max(width, round(w * scale)), max(height, round(h * scale))))
    y0, x0 = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[y0 : y0 + height, x0 : x0 + width].copy()
