"""One process owns the camera; a missing USB camera is a clear CameraUnavailable, not a crash."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiosk.hardware.camera import CameraConfig, CameraLock, CameraUnavailable, open_camera
from kiosk.hardware.camera_opencv import OpenCVCamera, device_opens


def test_second_open_in_the_same_process_fails_clearly(tmp_path) -> None:
    lock_file = tmp_path / "camera.lock"
    with (
        CameraLock(lock_file),
        pytest.raises(CameraUnavailable, match=r"in use by another process \(pid \d+\)"),
    ):
        CameraLock(lock_file).acquire()
    with CameraLock(lock_file):  # released on exit: the next owner gets it
        pass


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path) -> None:
    lock_file = tmp_path / "camera.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from kiosk.hardware.camera import CameraLock;"
            f"lock = CameraLock(Path({str(lock_file)!r})); lock.acquire(); print('held', flush=True);"
            "time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(CameraUnavailable, match=f"in use by another process \\(pid {holder.pid}\\)"):
            CameraLock(lock_file).acquire()
    finally:
        holder.kill()
        holder.wait()
    with CameraLock(lock_file):  # the kernel dropped the dead process's lock
        pass


def test_opencv_backend_without_a_device(tmp_path) -> None:
    device = tmp_path / "video7"
    camera = open_camera(CameraConfig(backend="opencv", device=str(device), lock_file=tmp_path / "lock"))
    assert isinstance(camera, OpenCVCamera)
    with pytest.raises(CameraUnavailable, match=f"no camera at {device}: is the USB camera plugged in"):
        camera.start()
    assert not device_opens(str(device))
    # a failed start leaves the camera free for the next attempt
    with CameraLock(tmp_path / "lock"):
        pass


def test_opencv_backend_with_something_that_is_not_a_camera(tmp_path) -> None:
    device = tmp_path / "not-a-camera"
    device.write_bytes(b"\x00" * 16)
    camera = OpenCVCamera(CameraConfig(backend="opencv", device=str(device), lock_file=tmp_path / "lock"))
    with pytest.raises(CameraUnavailable, match="cannot be opened"):
        camera.start()
    with CameraLock(tmp_path / "lock"):  # the lock was released on failure
        pass
