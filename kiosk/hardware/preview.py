"""Live preview as multipart/x-mixed-replace MJPEG, the format every browser shows in an <img> tag.

The web app (a later issue) serves it with one line:

    Response(mjpeg_stream(camera), mimetype=MJPEG_MIMETYPE)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from kiosk.hardware.camera import Camera, CameraUnavailable

BOUNDARY = "kioskframe"
MJPEG_MIMETYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"


def mjpeg_part(jpeg: bytes) -> bytes:
    header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return header + jpeg + b"\r\n"


def mjpeg_stream(
    camera: Camera,
    fps: float = 15.0,
    max_frames: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """Yield one multipart chunk per frame, at most `fps` a second.

    Frame-rate limited because each chunk costs a JPEG encode and the bandwidth of a full frame; the Pi must
    keep CPU for the scanner. Ends quietly if the camera goes away: the browser's <img> then shows its error
    state and the UI swaps in the "camera unavailable" screen from its own status poll.
    """
    interval = 1.0 / fps
    sent = 0
    next_due = clock()
    while max_frames is None or sent < max_frames:
        now = clock()
        if now < next_due:
            sleep(next_due - now)
        next_due = max(next_due + interval, clock())  # don't burst to catch up after a stall
        try:
            jpeg = camera.preview_jpeg()
        except CameraUnavailable:
            return
        yield mjpeg_part(jpeg)
        sent += 1
