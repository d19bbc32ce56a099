"""Synthetic camera scenes: wristbands, staff badges, wounds with a calibration marker, code-free clutter.

Shipped with the package (like gpiozero's MockFactory) so that the mock camera, the tests, the demo and
bench/scan.py all draw the same world. Codes are real symbols made by zxing-cpp's writer; they are then put
through what a camera does to a wristband: the band wraps round a wrist (a cylindrical remap that squeezes
modules towards the edges and darkens them), is held at an angle and slightly tilted (a homography), and
the picture gets uneven light, specular glare along the band, defocus and motion blur, sensor noise and
JPEG compression. Geometry is in fractions of the frame width, so one scene renders at any resolution.

All patient and staff details here are invented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import zxingcpp

from kiosk.hardware import textures

# symbology -> (zxing format, GS1 content?, sample payload, module size in fractions of frame width)
SYMBOLOGIES: dict[str, tuple[zxingcpp.BarcodeFormat, bool, str, float]] = {
    "code128": (zxingcpp.BarcodeFormat.Code128, False, "MRN0012345", 0.0021),
    "gs1-128": (zxingcpp.BarcodeFormat.Code128, True, "(8018)735000000000123458", 0.0019),
    "datamatrix": (zxingcpp.BarcodeFormat.DataMatrix, False, "MRN0012345", 0.0034),
    "gs1-datamatrix": (zxingcpp.BarcodeFormat.DataMatrix, True, "(8018)735000000000123458", 0.0030),
    "pdf417": (
        zxingcpp.BarcodeFormat.PDF417,
        False,
        "PID|1||MRN0012345^^^STMARY^MR||RIVERA^JAMIE||19800101|F",
        0.0020,
    ),
    "qr": (zxingcpp.BarcodeFormat.QRCode, False, "MRN=MRN0012345;NAME=Jamie Rivera;DOB=1980-01-01", 0.0028),
    "aztec": (zxingcpp.BarcodeFormat.Aztec, False, "MRN0012345", 0.0032),
}
STAFF_BADGE_PAYLOAD = "(8017)735000000000987654"  # GS1 GSRN for a service provider, valid check digit


@dataclass
class Look:
    """How hard the camera makes it. Units: px are frame px at 1280 wide (scaled for other widths)."""

    angle: float = 0.0  # degrees, band rotation in the frame
    scale: float = 1.0  # multiplies the symbology's module size
    bend: float = 0.0  # half the arc the visible band covers, in radians (0 = flat)
    oblique: float = 0.0  # sine of the angle the wrist is seen from the side: the band sags into an arc
    tilt: float = 0.0  # perspective corner jitter, fraction of band size
    light: float = 0.0  # strength of the lighting gradient, 0..1
    glare: float = 0.0  # peak specular highlight, 0..1
    defocus: float = 0.0  # gaussian sigma, px
    motion: float = 0.0  # motion blur length, px
    noise: float = 0.0  # sensor noise sigma, grey levels
    jpeg: int = 0  # JPEG quality, 0 = no recompression
    center: tuple[float, float] = (0.5, 0.5)  # where the code sits, fractions of the frame
    background: str = "arm"
    seed: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def code_image(symbology: str, text: str | None = None) -> np.ndarray:
    """The symbol at one pixel per module with its quiet zone, black on white (uint8)."""
    fmt, gs1, sample, _ = SYMBOLOGIES[symbology]
    barcode = zxingcpp.create_barcode(text or sample, fmt, **({"gs1": True} if gs1 else {}))
    image = np.array(barcode.to_image(scale=1, add_quiet_zones=True))
    if fmt == zxingcpp.BarcodeFormat.Aztec:  # Aztec needs no quiet zone, but a label always has a margin
        image = cv2.copyMakeBorder(image, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=255)
    if fmt == zxingcpp.BarcodeFormat.Code128:  # wristband bars are about a quarter of the code's length
        image = cv2.resize(
            image, (image.shape[1], max(16, image.shape[1] // 4)), interpolation=cv2.INTER_NEAREST
        )
    return image


def band_texture(code: np.ndarray, px_per_module: int, rng: np.random.Generator) -> np.ndarray:
    """A pale plastic band carrying the code and printed name/DOB beside it, `px_per_module` px/module."""
    label = cv2.resize(
        code, (code.shape[1] * px_per_module, code.shape[0] * px_per_module), interpolation=cv2.INTER_NEAREST
    )
    lh, lw = label.shape
    band_h = int(max(lh * rng.uniform(1.15, 1.4), 28 * px_per_module))  # a band is ~25 mm, codes ~8-20 mm
    text_w = int(band_h * rng.uniform(1.8, 2.6))
    band_w = lw + 2 * text_w
    tint = np.array([rng.uniform(225, 250), rng.uniform(225, 250), rng.uniform(225, 250)], np.float32)
    band = np.ones((band_h, band_w, 3), np.float32) * tint
    x0, y0 = text_w, (band_h - lh) // 2
    band[y0 : y0 + lh, x0 : x0 + lw] = np.minimum(band[y0 : y0 + lh, x0 : x0 + lw], label[..., None])
    scale = band_h * 0.12 / 22  # Hershey simplex at scale 1 is ~22 px tall
    for x in (int(band_h * 0.12), x0 + lw + int(band_h * 0.12)):  # printed text either side of the code
        textures.put_text(band, "RIVERA, JAMIE", (x, int(band_h * 0.42)), scale, rng)
        textures.put_text(band, "DOB 01/01/1980", (x, int(band_h * 0.68)), scale * 0.85, rng)
    return band


def bend_band(band: np.ndarray, half_arc: float, oblique: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Wrap the band round a cylinder whose axis runs across it; returns (shaded image, alpha).

    Seen from in front, a point at arc length s lands at x = R sin(s / R): modules squeeze together towards
    the sides, which is what defeats a decoder's fixed module-width assumption on real wristbands. Seen a
    little from one side (`oblique` = sine of that angle), the band also sags into an arc.
    """
    h, w = band.shape[:2]
    if half_arc <= 1e-3:
        return band, np.ones((h, w), np.float32)
    radius = (w / 2) / half_arc  # the whole band covers +-half_arc
    out_w = int(2 * radius * math.sin(half_arc))
    xs = (np.arange(out_w, dtype=np.float32) - out_w / 2) / radius
    theta = np.arcsin(np.clip(xs, -1, 1))
    sag = oblique * radius * (1 - np.cos(theta))
    out_h = h + math.ceil(sag.max())
    map_x = np.repeat(((theta * radius + w / 2).astype(np.float32))[None, :], out_h, axis=0)
    map_y = (np.arange(out_h, dtype=np.float32)[:, None] - sag[None, :]).astype(np.float32)
    bent = cv2.remap(band, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.remap(
        np.ones((h, w), np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    shading = (0.55 + 0.45 * np.cos(theta)).astype(np.float32)[None, :, None]
    return bent * shading, alpha


def add_glare(band: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A specular stripe along the cylinder axis, plus a soft spot: the lamp reflected in glossy plastic."""
    if strength <= 0:
        return band
    h, w = band.shape[:2]
    x = np.arange(w, dtype=np.float32)
    centre, width = rng.uniform(0.2, 0.8) * w, rng.uniform(0.02, 0.08) * w
    stripe = strength * np.exp(-0.5 * ((x - centre) / width) ** 2)
    glare = np.repeat(stripe[None, :], h, axis=0)
    return band + (255 - band) * glare[..., None]


def homography(
    src_w: int, src_h: int, look: Look, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """Rotate, scale and place the band (module size already applied), with a small random tilt."""
    src = np.float32([[0, 0], [src_w, 0], [src_w, src_h], [0, src_h]])
    c, s = math.cos(math.radians(look.angle)), math.sin(math.radians(look.angle))
    centred = src - np.float32([src_w / 2, src_h / 2])
    jitter = rng.uniform(-look.tilt, look.tilt, size=(4, 2)).astype(np.float32) * np.float32([src_w, src_h])
    moved = centred + jitter
    rotated = np.stack([moved[:, 0] * c - moved[:, 1] * s, moved[:, 0] * s + moved[:, 1] * c], axis=1)
    dst = rotated + np.float32([look.center[0] * width, look.center[1] * height])
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def render_band_scene(
    symbology: str, width: int, height: int, look: Look, text: str | None = None
) -> np.ndarray:
    """A wristband carrying `symbology` on an arm, degraded as `look` says. BGR uint8."""
    rng = np.random.default_rng(look.seed)
    frame = textures.background(look.background, width, height, rng)
    module_frac = SYMBOLOGIES[symbology][3] * look.scale
    tex_ppm = 4
    band = band_texture(code_image(symbology, text), tex_ppm, rng)
    band = add_glare(band, look.glare, rng)
    bent, alpha = bend_band(band, look.bend, look.oblique)
    k = module_frac * width / tex_ppm  # texture px -> frame px
    size = (max(8, int(bent.shape[1] * k)), max(8, int(bent.shape[0] * k)))
    pre = cv2.resize(bent, size, interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    matrix = homography(size[0], size[1], look, width, height, rng)
    warped = cv2.warpPerspective(pre, matrix, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(alpha, matrix, (width, height))
    # a soft contact shadow round the band, so its edge is not an unnaturally clean step
    shadow = cv2.GaussianBlur(mask, (0, 0), max(1.0, size[1] * 0.06))
    frame = frame * (1 - 0.35 * shadow[..., None])
    frame = frame * (1 - mask[..., None]) + warped * mask[..., None]
    return degrade(frame, look, rng)


def degrade(frame: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Uneven light, blur, sensor noise and JPEG, in the order a camera applies them."""
    height, width = frame.shape[:2]
    px = width / 1280  # blur and noise figures are given for a 1280-wide frame
    if look.light > 0:
        direction = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xx * math.cos(direction) + yy * math.sin(direction)) / max(width, height)
        frame = frame * (1 - look.light * (ramp - ramp.min()))[..., None]
    if look.defocus > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), look.defocus * px)
    if look.motion >= 1:
        length = max(2, round(look.motion * px))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        frame = cv2.filter2D(frame, -1, kernel / max(kernel.sum(), 1e-6))
    if look.noise > 0:
        frame = frame + rng.normal(0, look.noise, frame.shape).astype(np.float32)
    out = np.clip(frame, 0, 255).astype(np.uint8)
    if look.jpeg:
        _, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, look.jpeg])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def render_badge(width: int, height: int, look: Look, text: str = STAFF_BADGE_PAYLOAD) -> np.ndarray:
    """A staff ID card: photo box, name, and a GS1 DataMatrix with the provider's GSRN (AI 8017)."""
    rng = np.random.default_rng(look.seed)
    frame = textures.background("desk", width, height, rng)
    card_w, card_h = int(width * 0.42), int(width * 0.27)
    card = np.full((card_h, card_w, 3), (245, 240, 235), np.float32)
    card[: card_h // 5] = (150, 90, 20)  # the organisation's colour band
    cv2.rectangle(card, (card_w // 20, card_h // 4), (card_w // 3, card_h * 9 // 10), (170, 170, 170), -1)
    textures.put_text(card, "A. NURSE RN", (card_w * 2 // 5, card_h * 2 // 5), card_h / 220, rng)
    textures.put_text(card, "Wound Care", (card_w * 2 // 5, card_h // 2), card_h / 300, rng)
    barcode = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.DataMatrix, gs1=True)
    code = np.array(barcode.to_image(scale=1))
    size = int(card_h * 0.38)
    code = cv2.resize(code, (size, size), interpolation=cv2.INTER_NEAREST)
    y, x = card_h - size - card_h // 12, card_w - size - card_w // 12
    card[y : y + size, x : x + size] = code[..., None]
    matrix = homography(card_w, card_h, look, width, height, rng)
    warped = cv2.warpPerspective(card, matrix, (width, height))
    mask = cv2.warpPerspective(np.ones((card_h, card_w), np.float32), matrix, (width, height))
    return degrade(frame * (1 - mask[..., None]) + warped * mask[..., None], look, rng)


def render_wound(width: int, height: int, look: Look) -> np.ndarray:
    """Skin with a wound bed, and a calibration card: a 5 cm ruler and a colour-checker strip."""
    rng = np.random.default_rng(look.seed)
    frame = textures.background("wound", width, height, rng)
    card_w, card_h = int(width * 0.36), int(width * 0.09)
    card = np.full((card_h, card_w, 3), 250, np.float32)
    mm = card_w * 0.9 / 50
    x0 = card_w * 0.05
    for i in range(51):  # ruler ticks every millimetre, longer every 5 and 10
        x = int(x0 + i * mm)
        tick = card_h * (0.35 if i % 10 == 0 else 0.22 if i % 5 == 0 else 0.12)
        cv2.line(card, (x, 0), (x, int(tick)), (20, 20, 20), max(1, card_w // 500))
        if i % 10 == 0:
            textures.put_text(card, f"{i // 10}cm", (x + 2, int(card_h * 0.5)), card_h / 160, rng)
    patches = [(40, 40, 200), (40, 160, 40), (200, 80, 30), (30, 200, 230), (128, 128, 128), (30, 30, 30)]
    pw = card_w // (len(patches) + 2)
    for i, colour in enumerate(patches):
        cv2.rectangle(
            card, (pw + i * pw, int(card_h * 0.62)), (pw + (i + 1) * pw - 3, card_h - 4), colour, -1
        )
    look = Look(**{**look.__dict__, "center": (0.5, 0.8)})
    matrix = homography(card_w, card_h, look, width, height, rng)
    warped = cv2.warpPerspective(card, matrix, (width, height))
    mask = cv2.warpPerspective(np.ones((card_h, card_w), np.float32), matrix, (width, height))
    return degrade(frame * (1 - mask[..., None]) + warped * mask[..., None], look, rng)


def scene_names() -> list[str]:
    return [f"wristband-{s}" for s in SYMBOLOGIES] + ["staff-badge", "wound", "empty"]


def render(name: str, width: int, height: int, look: Look | None = None) -> np.ndarray:
    """A named scene as the mock camera shows it (defaults: a clean, slightly rotated, tilted view)."""
    look = look or Look(angle=17.0, tilt=0.03, light=0.2, noise=1.5, seed=7)
    if name.startswith("wristband-") and name.removeprefix("wristband-") in SYMBOLOGIES:
        return render_band_scene(name.removeprefix("wristband-"), width, height, look)
    if name == "staff-badge":
        return render_badge(width, height, look)
    if name == "wound":
        return render_wound(width, height, look)
    if name == "empty":
        return degrade(
            textures.background(look.background, width, height, np.random.default_rng(look.seed)),
            look,
            np.random.default_rng(look.seed),
        )
    raise KeyError(f"unknown scene {name!r} (known: {', '.join(scene_names())})")
