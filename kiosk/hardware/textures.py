"""Backgrounds for synthetic scenes: skin, wound beds, bed sheets, printed text, and the regular patterns
(striped fabric, grids) that tempt a barcode locator into false positives. Float32 BGR, 0..255."""

from __future__ import annotations

import cv2
import numpy as np

BACKGROUNDS = ("arm", "desk", "wound", "text", "stripes", "checker", "clutter")
_WORDS = ["wound", "care", "left", "lower", "leg", "dressing", "review", "consent", "ward", "7", "bed"]
_WORDS += ["12", "saline", "gauze", "date", "time", "Rx", "BP", "120/80", "pain", "score"]


def smooth_noise(width: int, height: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise in 0..1: random values on a coarse grid, upsampled smoothly (cheap, no dependency)."""
    coarse = rng.random((max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def put_text(
    image: np.ndarray, text: str, origin: tuple[int, int], scale: float, rng: np.random.Generator
) -> None:
    """Anti-aliased dark text on a float image (OpenCV draws text on 8-bit images only, so via a mask)."""
    ink = float(rng.uniform(10, 60))
    thickness = max(1, int(scale * 2))
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.putText(mask, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    alpha = (mask.astype(np.float32) / 255)[..., None]
    image[:] = image * (1 - alpha) + ink * alpha


def _skin(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    red = rng.uniform(90, 240)
    green = red * rng.uniform(0.68, 0.86)  # skin: red > green > blue, whatever the tone
    tone = np.array([green * rng.uniform(0.72, 0.92), green, red], np.float32)
    blotch = 0.85 + 0.3 * smooth_noise(width, height, max(8, width // 12), rng)
    pores = 0.96 + 0.08 * smooth_noise(width, height, 3, rng)
    return tone * (blotch * pores)[..., None]


def _sheet(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(rng.choice([[235, 230, 225], [200, 170, 120], [190, 210, 190]]), np.float32)
    folds = 0.8 + 0.25 * smooth_noise(width, height, max(16, width // 6), rng)
    return base * folds[..., None]


def background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "arm":
        frame = _sheet(width, height, rng)
        skin = _skin(width, height, rng)
        # a forearm crossing the frame, soft-edged
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        dist = np.abs((xx - width / 2) * np.sin(angle) - (yy - height / 2) * np.cos(angle))
        arm = np.clip((height * rng.uniform(0.25, 0.4) - dist) / (0.05 * height), 0, 1)
        return frame * (1 - arm[..., None]) + skin * arm[..., None]
    if kind == "desk":
        wood = np.array([90, 130, 170], np.float32)
        grain = 0.75 + 0.35 * smooth_noise(width, height, max(4, width // 40), rng)
        return wood * cv2.GaussianBlur(grain, (0, 0), sigmaX=width / 60, sigmaY=1)[..., None]
    if kind == "wound":
        frame = _skin(width, height, rng)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.3, 0.55)
        r = np.hypot(
            (xx - cx) / (width * rng.uniform(0.08, 0.16)), (yy - cy) / (height * rng.uniform(0.1, 0.2))
        )
        edge = smooth_noise(width, height, max(6, width // 30), rng)
        bed = np.clip(1.2 - r - 0.4 * edge, 0, 1)[..., None]
        slough = 0.7 + 0.6 * smooth_noise(width, height, max(3, width // 80), rng)
        colour = np.array([50, 60, 170], np.float32) * slough[..., None]
        return frame * (1 - bed) + colour * bed
    if kind == "text":
        frame = np.full((height, width, 3), rng.uniform(215, 250), np.float32)
        size = rng.uniform(0.4, 1.4) * width / 1280
        for y in range(int(30 * size) + 10, height, int(34 * size) + 6):
            words = " ".join(rng.choice(_WORDS, size=12))
            put_text(frame, words, (int(rng.uniform(5, 40)), y), size, rng)
        rot = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-30, 30), 1.0)
        return cv2.warpAffine(frame, rot, (width, height), borderMode=cv2.BORDER_REFLECT)
    if kind == "stripes":
        period = rng.uniform(4, 20) * width / 1280
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        duty = rng.uniform(0.3, 0.7)
        stripes = ((phase % 1.0) < duty).astype(np.float32)
        colour_a, colour_b = rng.uniform(20, 120, 3), rng.uniform(150, 250, 3)
        return colour_a * stripes[..., None] + colour_b * (1 - stripes[..., None])
    if kind == "checker":
        cell = max(2, int(rng.uniform(3, 14) * width / 1280))
        yy, xx = np.mgrid[0:height, 0:width]
        grid = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
        return (40 + 190 * grid)[..., None].repeat(3, axis=2)
    if kind == "clutter":
        frame = _sheet(width, height, rng)
        for _ in range(25):
            x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
            w, h = int(rng.uniform(10, width / 5)), int(rng.uniform(3, height / 5))
            cv2.rectangle(frame, (x, y), (x + w, y + h), [float(v) for v in rng.uniform(0, 255, 3)], -1)
        return frame
    raise KeyError(f"unknown background {kind!r} (known: {', '.join(BACKGROUNDS)})")
