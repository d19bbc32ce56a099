"""The mock camera: scenes, switching, real JPEG stills, folder playback, and `auto` never picking it."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from kiosk.hardware import scenes
from kiosk.hardware.camera import CameraConfig, CameraUnavailable, open_camera
from kiosk.hardware.camera_mock import MockCamera


def jpeg_size(data: bytes) -> tuple[int, int]:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        image.load()  # decodes the whole file: truncated data would raise
        return image.size


def test_scenes_switch_at_runtime_and_frames_have_preview_size() -> None:
    with MockCamera(scene="wound", preview_size=(640, 480), still_size=(800, 600)) as camera:
        wound = camera.frame_array()
        assert wound.shape == (480, 640, 3) and wound.dtype == np.uint8
        camera.show("wristband-qr")
        assert camera.scene == "wristband-qr"
        band = camera.frame_array()
        assert not np.array_equal(wound, band)
        assert camera.frame_gray().shape == (480, 640)
        assert jpeg_size(camera.preview_jpeg()) == (640, 480)
        with pytest.raises(KeyError, match="no scene"):
            camera.show("wristband-ean13")


def test_every_named_scene_renders() -> None:
    for name in scenes.scene_names():
        frame = scenes.render(name, 320, 240)
        assert frame.shape == (240, 320, 3)
        assert frame.std() > 5, f"{name} is a blank picture"


def test_still_is_a_real_jpeg_at_the_configured_size() -> None:
    with MockCamera(scene="staff-badge", preview_size=(320, 240), still_size=(1280, 720)) as camera:
        assert jpeg_size(camera.capture_still()) == (1280, 720)
        assert camera.stills_taken == 1


def test_default_still_is_hq_camera_full_resolution() -> None:
    with open_camera(CameraConfig(backend="mock", preview_size=(320, 240))) as camera:
        assert camera.info.still_size == (4056, 3040)
        assert jpeg_size(camera.capture_still()) == (4056, 3040)


def test_not_started_is_unavailable() -> None:
    camera = MockCamera(preview_size=(320, 240))
    with pytest.raises(CameraUnavailable, match="not started"):
        camera.frame_array()


def test_playback_of_a_folder(tmp_path) -> None:
    for i, colour in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        image = np.zeros((300, 400, 3), np.uint8)
        image[:] = colour
        cv2.imwrite(str(tmp_path / f"frame-{i}.png"), image)
    (tmp_path / "notes.txt").write_text("not an image")
    camera = open_camera(CameraConfig(backend="mock", mock_folder=tmp_path, preview_size=(200, 150)))
    with camera:
        assert camera.scenes() == ["frame-0.png", "frame-1.png", "frame-2.png"]
        assert tuple(camera.frame_array()[75, 100]) == (0, 0, 255)
        assert camera.advance() == "frame-1.png"
        assert tuple(camera.frame_array()[75, 100]) == (0, 255, 0)
        camera.show("frame-2.png")
        assert tuple(camera.frame_array()[75, 100]) == (255, 0, 0)
        assert jpeg_size(camera.capture_still()) == (4056, 3040)


def test_empty_playback_folder_is_unavailable(tmp_path) -> None:
    with pytest.raises(CameraUnavailable, match="no images"):
        MockCamera(folder=tmp_path)


def test_auto_never_falls_back_to_the_mock(tmp_path) -> None:
    # no picamera2 here, and the configured V4L2 device does not exist
    with pytest.raises(CameraUnavailable, match="no camera found"):
        open_camera(CameraConfig(backend="auto", device=str(tmp_path / "video0")))
