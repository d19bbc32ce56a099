"""picamera2 backend: call order and a preview that keeps running during a still.

The ONE place a stub stands in for a library: picamera2 and libcamera need a Pi camera, and the camera is
the device the project rules allow us to mock. The fake records every call in one shared list.
"""

from __future__ import annotations

import enum
import io
import sys
import threading
import time
import types
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from kiosk.hardware import camera_picamera2
from kiosk.hardware.camera import CameraConfig, CameraUnavailable, open_camera
from kiosk.hardware.camera_picamera2 import Picamera2Camera

SENSOR = (640, 480)  # small "full resolution" keeps the test fast


class AfMode(enum.IntEnum):
    Manual = 0
    Auto = 1
    Continuous = 2


class AfTrigger(enum.IntEnum):
    Start = 0
    Cancel = 1


class AfState(enum.IntEnum):
    Idle = 0
    Scanning = 1
    Focused = 2
    Failed = 3


class FakeRequest:
    def __init__(self, cam: FakePicamera2, af_state: AfState) -> None:
        self.cam, self.af_state = cam, af_state

    def make_array(self, name: str) -> np.ndarray:
        self.cam.calls.append(("make_array", name))
        if name == "lores":
            w, h = self.cam.config["lores"]["size"]
            return np.full((h * 3 // 2, w), 128, np.uint8)  # YUV420 planar: Y plane then U, V
        w, h = self.cam.config["main"]["size"]
        image = np.zeros((h, w, 3), np.uint8)
        image[: h // 2] = 255  # top half white: lets the test check the still is turned upright
        return image

    def get_metadata(self) -> dict[str, object]:
        return {"AfState": self.af_state}

    def release(self) -> None:
        self.cam.calls.append(("release",))


class FakePicamera2:
    calls: ClassVar[list[tuple[object, ...]]] = []
    cameras: ClassVar[list[dict[str, object]]] = [{"Model": "imx708", "Num": 0}]

    def __init__(self, camera_num: int = 0) -> None:
        self.calls.append(("Picamera2", camera_num))
        self.sensor_resolution = SENSOR
        self.camera_properties = {"Model": "imx708"}
        self.camera_controls = {"AfMode": (0, 2, 0), "AfTrigger": (0, 1, 0)}
        self.af_frames: list[AfState] = []
        self.started = False

    @staticmethod
    def global_camera_info() -> list[dict[str, object]]:
        return FakePicamera2.cameras

    def create_still_configuration(self, **kwargs: object) -> dict[str, object]:
        self.calls.append(("create_still_configuration",))
        return dict(kwargs)

    def configure(self, config: dict[str, object]) -> None:
        self.calls.append(("configure",))
        self.config = config

    def set_controls(self, controls: dict[str, object]) -> None:
        self.calls.append(("set_controls", dict(controls)))
        if controls.get("AfTrigger") == AfTrigger.Start:
            # the lens scans for a few frames, then reports focus
            self.af_frames = [AfState.Focused, AfState.Scanning, AfState.Scanning, AfState.Focused]

    def start(self) -> None:
        self.calls.append(("start",))
        self.started = True

    def capture_request(self) -> FakeRequest:
        time.sleep(0.005)  # a frame interval, so the loop does not spin
        if not self.started:
            raise RuntimeError("camera not started")
        self.calls.append(("capture_request",))
        state = self.af_frames.pop(0) if self.af_frames else AfState.Idle
        return FakeRequest(self, state)

    def stop(self) -> None:
        self.calls.append(("stop",))
        self.started = False

    def close(self) -> None:
        self.calls.append(("close",))


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    FakePicamera2.calls = []
    FakePicamera2.cameras = [{"Model": "imx708", "Num": 0}]
    picamera2 = types.ModuleType("picamera2")
    picamera2.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    libcamera = types.ModuleType("libcamera")
    libcamera.controls = types.SimpleNamespace(  # type: ignore[attr-defined]
        AfModeEnum=AfMode, AfTriggerEnum=AfTrigger, AfStateEnum=AfState
    )
    monkeypatch.setitem(sys.modules, "picamera2", picamera2)
    monkeypatch.setitem(sys.modules, "libcamera", libcamera)
    return FakePicamera2


def index(calls: list[tuple[object, ...]], entry: tuple[object, ...], start: int = 0) -> int:
    return next(i for i in range(start, len(calls)) if calls[i][: len(entry)] == entry)


def test_still_call_order_and_preview_keeps_running(fake_picamera2, tmp_path) -> None:
    config = CameraConfig(
        backend="picamera2", preview_size=(320, 240), lock_file=tmp_path / "lock", rotation=90
    )
    camera = open_camera(config)
    assert isinstance(camera, Picamera2Camera)
    with camera:
        assert camera.info.model == "imx708" and camera.info.autofocus
        assert camera.info.still_size == (480, 640)  # turned upright: width and height swap
        assert camera.frame_array().shape == (320, 240, 3)
        jpeg = camera.capture_still()
        frames_before = sum(1 for c in fake_picamera2.calls if c == ("make_array", "lores"))
        time.sleep(0.1)
        frames_after = sum(1 for c in fake_picamera2.calls if c == ("make_array", "lores"))
    calls = fake_picamera2.calls

    configure, start = index(calls, ("configure",)), index(calls, ("start",))
    trigger = next(i for i, c in enumerate(calls) if c[0] == "set_controls" and "AfTrigger" in c[1])
    main = index(calls, ("make_array", "main"))
    assert index(calls, ("create_still_configuration",)) < configure < start < trigger < main
    # the still came from a request captured after the trigger, and that request went back
    assert trigger < max(i for i in range(main) if calls[i] == ("capture_request",)) < main
    assert index(calls, ("release",), main) > main
    # it waited for the lens: two Scanning frames then Focused, skipping the stale Focused first frame
    assert sum(1 for c in calls[trigger:main] if c == ("capture_request",)) == 4
    # continuous autofocus is restored afterwards
    restore = index(calls, ("set_controls",), main)
    assert calls[restore][1] == {"AfMode": AfMode.Continuous}
    # the preview never stopped for the still, and kept running after it
    assert index(calls, ("stop",)) > main
    assert frames_after > frames_before
    assert calls[-2:] == [("stop",), ("close",)]

    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.size == (480, 640)
        pixels = np.asarray(image.convert("L"))
    # the sensor's white top half is on the right after a 90-degree clockwise turn
    assert pixels[:, -20:].mean() > 200 and pixels[:, :20].mean() < 50


def test_config_requests_full_resolution_main_and_preview_lores(fake_picamera2, tmp_path) -> None:
    with Picamera2Camera(CameraConfig(preview_size=(320, 240), lock_file=tmp_path / "lock")) as camera:
        cam = camera._picam
        assert cam.config["main"] == {"size": SENSOR, "format": "RGB888"}
        assert cam.config["lores"] == {"size": (320, 240), "format": "YUV420"}
        assert ("set_controls", {"AfMode": AfMode.Continuous}) in fake_picamera2.calls


def test_second_owner_is_refused_while_the_first_runs(fake_picamera2, tmp_path) -> None:
    config = CameraConfig(backend="picamera2", preview_size=(160, 120), lock_file=tmp_path / "lock")
    with Picamera2Camera(config), pytest.raises(CameraUnavailable, match="in use by another process"):
        Picamera2Camera(config).start()
    with Picamera2Camera(config) as camera:  # free again after stop()
        assert camera.frame_array().shape == (120, 160, 3)


def test_auto_prefers_a_present_pi_camera(fake_picamera2, tmp_path) -> None:
    assert camera_picamera2.camera_present(0)
    assert isinstance(open_camera(CameraConfig(lock_file=tmp_path / "lock")), Picamera2Camera)
    fake_picamera2.cameras = []
    assert not camera_picamera2.camera_present(0)
    with pytest.raises(CameraUnavailable, match="no camera found"):
        open_camera(CameraConfig(device=str(tmp_path / "video0")))


def test_missing_picamera2_is_a_plain_message(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` raise ImportError
    with pytest.raises(CameraUnavailable, match="python3-picamera2"):
        Picamera2Camera(CameraConfig(lock_file=tmp_path / "lock")).start()
    assert not camera_picamera2.camera_present()


def test_concurrent_stills_are_serialised(fake_picamera2, tmp_path) -> None:
    config = CameraConfig(preview_size=(160, 120), lock_file=tmp_path / "lock", autofocus=False)
    with Picamera2Camera(config) as camera:
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(camera.capture_still())) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    assert len(results) == 3 and all(r[:2] == b"\xff\xd8" for r in results)
    assert sum(1 for c in fake_picamera2.calls if c == ("make_array", "main")) == 3
