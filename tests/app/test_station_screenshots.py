"""Screenshots of every station screen at 800x480 and 1280x720, taken by walking the real app with
bench/screenshots.py; the walk itself checks each screen is reachable. The test writes to a temporary
folder; `bench/screenshots.py` (default --out docs/screenshots) refreshes the ones in the docs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_every_screen_has_screenshots_at_both_sizes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_screenshots", ROOT / "bench" / "screenshots.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.run(tmp_path, [(800, 480), (1280, 720)])
    names = {p.name for p in written}
    for screen in ("signin", "patient-scan", "patient-confirm", "patient-record", "consent-who",
                   "consent-sign", "capture", "bodymap", "review", "send-recipients", "done", "idle-warning",
                   "admin-outbox", "admin-camera"):  # fmt: skip
        for size in ("800x480", "1280x720"):
            assert f"station-{screen}-{size}.png" in names
    for path in written:
        with Image.open(path) as image:
            assert image.size in ((800, 480), (1280, 720))
