"""Cut-out fixes (straighten, sharpen), the text-proof locator source and the conflicting-reads rule."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import zxingcpp

from kiosk.hardware import scenes
from kiosk.hardware.scenes import Look
from kiosk.scan import enhance, locate
from kiosk.scan.decode import Scanner, _without_conflicts


def bars(width: int = 400, height: int = 220, code_h: int = 80, seed: int = 1) -> np.ndarray:
    """Random vertical bars (2-8 px) in a band of `code_h` rows across the middle of a white image."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width), 235, np.uint8)
    x, dark = 30, True
    while x < width - 30:
        step = int(rng.integers(2, 9))
        if dark:
            image[(height - code_h) // 2 : (height + code_h) // 2, x : x + step] = 25
        x, dark = x + step, not dark
    return image


def sag(image: np.ndarray, depth: float) -> np.ndarray:
    """Shift columns down by a parabola (0 mid-way, `depth` px at the ends): a band seen from aside."""
    h, w = image.shape
    t = (np.arange(w, dtype=np.float32) - w / 2) / (w / 2)
    map_x = np.ascontiguousarray(np.broadcast_to(np.arange(w, dtype=np.float32), (h, w)))
    map_y = np.arange(h, dtype=np.float32)[:, None] - depth * t[None, :] ** 2
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def centre_rows(image: np.ndarray) -> np.ndarray:
    """Per column, the middle of the dark run (columns that have one)."""
    dark = image < 128
    cols = np.nonzero(dark.any(axis=0))[0]
    return np.array([np.nonzero(dark[:, c])[0].mean() for c in cols])


def test_straighten_flattens_a_sagging_code() -> None:
    bent = sag(bars(), depth=30)
    assert np.ptp(centre_rows(bent)) > 20
    line = enhance.code_centre_line(bent)
    assert line is not None and 15 < line.max() - line.min() < 35
    straight = enhance.straighten(bent)
    assert straight is not None and straight.shape == bent.shape
    assert np.ptp(centre_rows(straight)) < 4  # rows now run along the code
    # bars stay vertical: every column keeps its dark/light state, only rows move
    assert np.array_equal((bent < 128).any(axis=0), (straight < 128).any(axis=0))


def test_straighten_leaves_straight_or_empty_cut_outs_alone() -> None:
    assert enhance.straighten(bars()) is None  # already straight
    assert enhance.straighten(np.full((200, 400), 200, np.uint8)) is None  # nothing to fit
    assert enhance.straighten(np.zeros((10, 30), np.uint8)) is None  # too small


def test_sharpen_restores_edge_contrast() -> None:
    blurred = cv2.GaussianBlur(bars(), (0, 0), 2.0)
    sharp = enhance.sharpen(blurred, 2.5, 1.5)
    assert sharp.dtype == np.uint8 and sharp.shape == blurred.shape
    gradient = lambda im: np.abs(np.diff(im.astype(np.float32), axis=1)).mean()  # noqa: E731
    assert gradient(sharp) > 1.5 * gradient(blurred)
    flat = np.full((50, 50), 120, np.uint8)
    assert np.array_equal(enhance.sharpen(flat), flat)  # no edges, nothing invented
    assert enhance.upscale(flat, 2.0).shape == (100, 100)


def test_straighten_and_sharpen_make_a_curved_blurred_code_128_readable() -> None:
    code = scenes.code_image("code128", "MRN0012345")
    label = cv2.resize(code, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    label = cv2.copyMakeBorder(label, 60, 60, 10, 10, cv2.BORDER_CONSTANT, value=255)
    bent = cv2.GaussianBlur(sag(label, depth=label.shape[0] * 0.45), (0, 0), 1.6)

    def read(im: np.ndarray) -> list[str]:
        return [r.text for r in zxingcpp.read_barcodes(im, formats=zxingcpp.BarcodeFormat.Code128)]

    assert read(bent) == []  # no row crosses every bar
    fixed = enhance.sharpen(enhance.straighten(bent), 2.5, 1.5)
    assert read(fixed) == ["MRN0012345"]


def test_coherent_locator_finds_a_code_beside_printed_text() -> None:
    # printed text around the band has as much edge energy as the blurred code and merges with it
    look = Look(angle=301, scale=1.27, bend=0.48, oblique=0.07, tilt=0.05, light=0.42, glare=0.19,
                defocus=0.6, motion=1.1, noise=2.1, jpeg=84, center=(0.478, 0.417), background="text",
                seed=1577678151)  # fmt: skip
    frame = scenes.render_band_scene("code128", 1280, 720, look)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    near = [
        c
        for c in locate.find_candidates(gray)
        if np.hypot(c.center[0] - 0.478 * 1280, c.center[1] - 0.417 * 720) < 60 and c.coherence > 0.5
    ]
    assert near and max(near[0].size) < 600  # the code on its own, not code plus a page of text
    assert [c.text for c in Scanner().scan(frame).codes] == ["MRN0012345"]


def test_hard_curved_blurred_linear_codes_decode() -> None:
    # hard frames (bend, oblique view, defocus, motion blur, noise, JPEG) that the plain cut-out pass misses;
    # straighten + sharpen reads them
    looks = {
        "code128": Look(angle=292.55, scale=1.10, bend=0.72, oblique=0.25, tilt=0.07, light=0.45, glare=0.54,
                        defocus=1.22, motion=3.69, noise=6.9, jpeg=72, center=(0.607, 0.349),
                        background="wound", seed=1789010143),
        "gs1-128": Look(angle=172.21, scale=1.01, bend=0.64, oblique=0.35, tilt=0.07, light=0.57, glare=0.42,
                        defocus=1.07, motion=2.70, noise=4.0, jpeg=66, center=(0.536, 0.472), seed=864420252),
    }  # fmt: skip
    for symbology, look in looks.items():
        frame = scenes.render_band_scene(symbology, 1280, 720, look)
        result = Scanner().scan(frame)
        assert result.stage == "candidates"
        assert [c.text for c in result.codes] == [scenes.SYMBOLOGIES[symbology][2].replace("(8018)", "8018")]


def fake_read(text: str, x: float, y: float, w: float, h: float) -> SimpleNamespace:
    pt = lambda px, py: SimpleNamespace(x=px, y=py)  # noqa: E731
    position = SimpleNamespace(
        top_left=pt(x, y), top_right=pt(x + w, y), bottom_right=pt(x + w, y + h), bottom_left=pt(x, y + h)
    )
    return SimpleNamespace(format="PDF417", text=text, position=position)


def test_overlapping_reads_that_disagree_are_both_dropped() -> None:
    good = fake_read("PID|1||MRN0012345", 100, 100, 300, 100)
    garbage = fake_read("QTAAP1>'MRN00", 150, 110, 40, 80)  # a strip inside the same symbol
    elsewhere = fake_read("MRN0099999", 600, 100, 100, 100)
    again = fake_read("PID|1||MRN0012345", 102, 101, 298, 99)  # the same code read twice is no conflict
    assert _without_conflicts([good, garbage, elsewhere]) == [elsewhere]
    assert _without_conflicts([good, again, elsewhere]) == [good, again, elsewhere]
    line = fake_read("MRN0012345", 100, 150, 300, 0)  # linear codes can come back as a line
    assert _without_conflicts([line, fake_read("MRN0099999", 240, 140, 30, 20)]) == []
