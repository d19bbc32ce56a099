"""Camera path timings with the mock camera: preview frame rate and latency, still-capture latency.

    .venv/bin/python bench/camera.py [--seconds 3]

- preview: the MJPEG stream's sustained rate (uncapped) and the time to produce one preview JPEG from a
  fresh frame (what every real backend pays per frame: colour conversion is done, JPEG encode is not);
- stills: capture_still() at 4056x3040 (HQ camera) and 1280x720, split into the mock's synthetic render
  (not paid by a real camera) and the JPEG encode of the full frame (paid by every backend, since stills
  are encoded by OpenCV from the upright array).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2

from kiosk.hardware.camera import PREVIEW_JPEG_QUALITY, encode_jpeg
from kiosk.hardware.camera_mock import MockCamera
from kiosk.hardware.preview import mjpeg_stream


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(times):7.1f} ms   p90 {p90:7.1f} ms   (n={len(times)})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} thread(s)")
    for size in ((640, 480), (1280, 720)):
        with MockCamera(scene="wristband-datamatrix", preview_size=size) as camera:
            frame = camera.frame_array()
            start, frames = time.perf_counter(), 0
            for _ in mjpeg_stream(camera, fps=1000):
                frames += 1
                if time.perf_counter() - start > args.seconds:
                    break
            rate = frames / (time.perf_counter() - start)
            encode = timed(lambda f=frame: encode_jpeg(f, PREVIEW_JPEG_QUALITY), 50)
            ceiling = 1000 / statistics.median(encode)
            print(f"preview {size[0]}x{size[1]}: stream {rate:6.0f} fps (mock, cached JPEG)")
            print(f"preview {size[0]}x{size[1]}: encode {summary(encode)}; ~{ceiling:.0f} fps max")
    for size in ((1280, 720), (4056, 3040)):
        with MockCamera(scene="wristband-datamatrix", preview_size=(640, 480), still_size=size) as camera:
            still = timed(camera.capture_still, 5)
            frame = camera._render(size)  # the rendered still, to time the encode alone
            encode = timed(lambda f=frame: encode_jpeg(f, 92), 5)
            print(f"still {size[0]}x{size[1]}: capture_still {summary(still)}")
            print(f"still {size[0]}x{size[1]}: of which JPEG encode {summary(encode)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
