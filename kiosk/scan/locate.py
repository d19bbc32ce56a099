"""Find code-like regions in a frame and rectify them, so the decoder sees each code upright and big enough.

Off-the-shelf decoders scan rows: a 1D code turned more than ~15 degrees from a row, or a small code among
texture, is missed. We look for what every barcode has and skin, sheets and wound beds lack: dense, strong
edges. The local structure tensor (smoothed products of image gradients) gives per pixel

- energy = how much edge there is (codes are dense with edges; text is sparser, skin is weak),
- coherence = how much the edges agree in direction (1D codes: high; 2D codes: lower),
- the dominant gradient direction, which for a 1D code is across its bars.

Dense-energy blobs become candidates; each is cut out along its own orientation (bars made vertical) with a
margin for the quiet zone, and scaled up when modules are small. The whole frame is still decoded first
(see decode.py); candidates are the second chance, not a replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

WORK_WIDTH = 800  # the locator looks at a reduced frame: blobs, not modules, matter here


@dataclass(frozen=True)
class Candidate:
    center: tuple[float, float]  # full-frame px
    size: tuple[float, float]  # (along the gradient, across it) in full-frame px
    angle: float  # degrees of the dominant gradient; rotating by it makes 1D bars vertical
    cross_angle: float | None  # the roughly perpendicular gradient (rows, band edges), if any
    coherence: float  # 0..1: near 1 for 1D codes
    score: float


def _dominant_angles(gx: np.ndarray, gy: np.ndarray) -> tuple[float, float | None]:
    """Main gradient direction and, if there is one, a second roughly perpendicular one (degrees).

    Peaks of the magnitude-weighted histogram of doubled gradient angles, not the mean: a wristband mixes bar
    edges with the band's own edges and printed text, and a mean drifts towards them. The second peak (row
    boundaries of a PDF417, the band's long edges) lets `rectify` undo the shear a tilted view adds.
    """
    mag2 = gx * gx + gy * gy
    strong = mag2 > np.percentile(mag2, 60)
    doubled = np.degrees(np.arctan2(2 * gx[strong] * gy[strong], gx[strong] ** 2 - gy[strong] ** 2))
    hist, _ = np.histogram(doubled, bins=180, range=(-180, 180), weights=np.sqrt(mag2[strong]))
    hist = np.convolve(np.concatenate([hist[-2:], hist, hist[:2]]), np.ones(5) / 5, mode="valid")
    peak = int(np.argmax(hist))
    # perpendicular edges sit 180 degrees away in doubled angle; look within +-50 (+-25 real) of that
    opposite = [(peak + 90 + d) % 180 for d in range(-25, 26)]
    second = max(opposite, key=lambda i: hist[i])
    main_angle = (peak * 2 - 179) / 2
    if hist[second] < 0.08 * hist[peak]:
        return main_angle, None
    return main_angle, (second * 2 - 179) / 2


def find_candidates(gray: np.ndarray, max_candidates: int = 6) -> list[Candidate]:
    """Code-like regions, best first. `gray` is uint8, any size.

    Two sources. (1) Blobs of strong edge energy, best by energy and size. (2) Blobs where that energy is
    also coherent over a wider window (one dominant edge direction: linear codes, PDF417): printed text
    next to a code can have as much edge energy as the code, so in (1) the two merge into one large blob
    whose dominant direction is the text's, and the code's own bars are never turned upright; text is not
    coherent, so (2) finds the code on its own. (2)'s blobs come first unless (1) already has the same one.
    """
    h, w = gray.shape
    scale = min(1.0, WORK_WIDTH / w)
    small = (
        cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if scale < 1
        else gray
    )
    sh, sw = small.shape
    window = max(5, sw // 80) | 1
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    gxx, gyy, gxy = gx * gx, gy * gy, gx * gy
    k = (window, window)
    jxx, jyy, jxy = cv2.boxFilter(gxx, -1, k), cv2.boxFilter(gyy, -1, k), cv2.boxFilter(gxy, -1, k)
    energy = jxx + jyy
    # codes are the strongest, densest edges in view: threshold relative to the frame, with an absolute floor
    # so that a blank or blurred frame (nothing strong anywhere) yields no candidates at all
    floor = 900.0
    level = max(floor, float(np.percentile(energy[::4, ::4], 97)) * 0.35)
    strong = energy > level
    tensors = (gx, gy, jxx, jyy, jxy)
    by_energy = _blobs(strong.astype(np.uint8), tensors, scale)
    by_energy.sort(key=lambda cand: cand.score, reverse=True)
    min_code = (0.05 * w) ** 2  # full-frame px^2: the smallest code we read is ~64 px across at 1280 wide
    # coherence over a window about twice as wide, at half resolution: the tensors already averaged over
    # `window`, subsampled and averaged again over half of it (a quarter of the cost of the full size)
    sub = (slice(0, sh - sh % 2, 2), slice(0, sw - sw % 2, 2))
    hk = (window // 2 | 1, window // 2 | 1)
    hxx, hyy, hxy = (cv2.boxFilter(np.ascontiguousarray(t[sub]), -1, hk) for t in (jxx, jyy, jxy))
    coherent = (hxx - hyy) ** 2 + 4 * hxy * hxy > (COHERENT * (hxx + hyy)) ** 2
    by_coherence = _blobs(
        (strong[sub] & coherent).astype(np.uint8), tuple(t[sub] for t in tensors), scale / 2
    )
    by_coherence = [c for c in by_coherence if c.coherence >= COHERENT and c.size[0] * c.size[1] >= min_code]
    by_coherence.sort(key=lambda cand: cand.score, reverse=True)
    extra = [c for c in by_coherence[:3] if not any(_same_region(c, other) for other in by_energy)]
    return (extra + by_energy)[:max_candidates]


MAX_BLOBS = 12  # largest blobs described per mask
COHERENT = 0.5  # structure-tensor coherence over the wide window: codes with bars >= ~0.55, text ~0.2-0.4


def _same_region(a: Candidate, b: Candidate) -> bool:
    ratio = max(a.size) / max(max(b.size), 1e-6)
    dist = math.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1])
    return 0.7 < ratio < 1.4 and dist < 0.25 * max(b.size)


def _blobs(mask: np.ndarray, tensors: tuple[np.ndarray, ...], scale: float) -> list[Candidate]:
    """Connected regions of `mask` (closed and opened a little) as candidates, unsorted."""
    gx, gy, jxx, jyy, jxy = tensors
    sh, sw = mask.shape
    close = max(3, sw // 100) | 1
    mask = cv2.morphologyEx(
        mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
    )
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = (sw * 0.012) ** 2
    areas = stats[:, cv2.CC_STAT_AREA]
    labels_ok = [i for i in range(1, count) if min_area <= areas[i] <= 0.5 * sw * sh]
    # describing a blob costs ~1 ms; ranking is by energy x sqrt(area), so tiny blobs cannot make the cut
    labels_ok = sorted(labels_ok, key=lambda i: areas[i], reverse=True)[:MAX_BLOBS]
    found: list[Candidate] = []
    for label in labels_ok:
        area = areas[label]
        x, y, bw, bh = stats[label, :4]
        region = labels[y : y + bh, x : x + bw] == label
        sxx = float(jxx[y : y + bh, x : x + bw][region].sum())
        syy = float(jyy[y : y + bh, x : x + bw][region].sum())
        sxy = float(jxy[y : y + bh, x : x + bw][region].sum())
        coherence = math.hypot(sxx - syy, 2 * sxy) / max(sxx + syy, 1e-6)
        angle, cross = _dominant_angles(
            gx[y : y + bh, x : x + bw][region], gy[y : y + bh, x : x + bw][region]
        )
        ys, xs = np.nonzero(region)
        points = np.column_stack([xs + x, ys + y]).astype(np.float32)
        # extent measured along and across the gradient direction, not the blob's own box: a band with
        # text beside the code makes a long blob whose box angle says nothing about the bars
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        centre = points.mean(axis=0)
        rel = points - centre
        along = rel[:, 0] * c + rel[:, 1] * s
        across = -rel[:, 0] * s + rel[:, 1] * c
        lo_a, hi_a = np.percentile(along, [1, 99])
        lo_c, hi_c = np.percentile(across, [1, 99])
        mid = centre + np.float32([c, s]) * (lo_a + hi_a) / 2 + np.float32([-s, c]) * (lo_c + hi_c) / 2
        mean_energy = (sxx + syy) / area
        found.append(
            Candidate(
                center=(float(mid[0]) / scale, float(mid[1]) / scale),
                size=(float(hi_a - lo_a + 1) / scale, float(hi_c - lo_c + 1) / scale),
                angle=angle,
                cross_angle=cross,
                coherence=coherence,
                score=mean_energy * math.sqrt(area),
            )
        )
    return found


def rectify(
    gray: np.ndarray,
    cand: Candidate,
    margin: float = 0.15,
    min_side: int = 160,
    turn: float = 0.0,
    resample: float = 1.0,
) -> np.ndarray:
    """Cut the candidate out of the full frame with its bars vertical and its rows horizontal.

    An affine map, not just a rotation: under a tilted view bars and rows are no longer perpendicular, and
    mapping both measured directions onto the axes removes that shear. `turn` adds a rotation (degrees);
    `resample` scales the output, giving a second, independently sampled view of the same region.
    """
    along, across = cand.size
    pad = margin * max(along, across) + 8
    out_w, out_h = along + 2 * pad, across + 2 * pad
    # enlarge small cut-outs: zxing wants >= ~2 px per module; ~2x costs little on a small patch
    zoom = min(3.0, max(1.0, min_side / max(1.0, min(out_w, out_h)))) * resample
    a = math.radians(cand.angle + turn)
    u = np.array([math.cos(a), math.sin(a)])  # along the gradient: patch x
    v = np.array([-math.sin(a), math.cos(a)])  # along the bars: patch y
    if cand.cross_angle is not None and turn == 0.0:
        c = math.radians(cand.cross_angle)
        row_dir = np.array([-math.sin(c), math.cos(c)])  # rows run perpendicular to their own gradient
        row_dir *= np.sign(row_dir @ u) or 1.0
        if row_dir @ u > math.cos(math.radians(25)):  # beyond that it is not shear but a wrong pairing
            u = row_dir
    cx, cy = cand.center
    ow, oh = round(out_w * zoom), round(out_h * zoom)
    # inverse map, patch (px, py) -> frame: centre + (px - ow/2) u / zoom + (py - oh/2) v / zoom
    m = np.float32(
        [
            [u[0] / zoom, v[0] / zoom, cx - (u[0] * ow + v[0] * oh) / (2 * zoom)],
            [u[1] / zoom, v[1] / zoom, cy - (u[1] * ow + v[1] * oh) / (2 * zoom)],
        ]
    )
    return cv2.warpAffine(
        gray, m, (ow, oh), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
