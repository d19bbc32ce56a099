"""The MJPEG preview stream: multipart framing, real JPEG parts, rate limit, quiet end."""

from __future__ import annotations

import time

from kiosk.hardware.camera_mock import MockCamera
from kiosk.hardware.preview import BOUNDARY, MJPEG_MIMETYPE, mjpeg_stream


def test_multipart_chunks_carry_whole_jpegs() -> None:
    assert f"multipart/x-mixed-replace; boundary={BOUNDARY}" == MJPEG_MIMETYPE
    with MockCamera(scene="wristband-aztec", preview_size=(320, 240)) as camera:
        chunks = list(mjpeg_stream(camera, fps=200, max_frames=3))
    assert len(chunks) == 3
    for chunk in chunks:
        head, _, rest = chunk.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == f"--{BOUNDARY}"
        assert "Content-Type: image/jpeg" in lines
        length = int(next(line for line in lines if line.startswith("Content-Length:")).split(":")[1])
        body = rest[:length]
        assert body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9"
        assert rest[length:] == b"\r\n"


def test_frame_rate_is_limited() -> None:
    with MockCamera(scene="empty", preview_size=(160, 120)) as camera:
        start = time.monotonic()
        frames = sum(1 for _ in mjpeg_stream(camera, fps=20, max_frames=5))
        elapsed = time.monotonic() - start
    assert frames == 5
    assert elapsed >= 4 / 20 * 0.9  # five frames at 20 fps span four intervals


def test_stream_ends_when_the_camera_goes_away() -> None:
    camera = MockCamera(scene="empty", preview_size=(160, 120))
    camera.start()
    stream = mjpeg_stream(camera, fps=100)
    assert next(stream).startswith(f"--{BOUNDARY}".encode())
    camera.stop()
    assert list(stream) == []
