"""Image fixes for rectified cut-outs that zxing-cpp could not read as they are.

A cut-out from `locate.rectify` has its bars (or a 2D code's columns) vertical. Two things still defeat
zxing-cpp's row scanners on a wristband:

- the code's rows are not straight: a band wrapped round a wrist and seen a little from the side sags into
  an arc, and a tilted view shears it, so no single image row runs along the whole code. `straighten` finds
  the code's vertical extent column by column (where the bar edges are), fits a smooth centre line through
  it and shifts each column so that the line becomes horizontal. Vertical lines stay vertical, so bars are
  not distorted; only their position up or down changes.
- blur: defocus and motion blur smear 2-3 px modules together. `sharpen` is an unsharp mask (the image plus a
  multiple of its difference from a blurred copy), which restores edge contrast enough for the binarizer.

Neither knows which code it looks at; both are general image operations, with guards that return the input
unchanged (or None) when there is nothing to fit.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np


def sharpen(gray: np.ndarray, sigma: float = 2.0, amount: float = 1.5) -> np.ndarray:
    """Unsharp mask: gray + amount * (gray - blur(gray, sigma)), saturated to uint8."""
    blurred = cv2.GaussianBlur(gray, (0, 0), sigma)
    return cv2.addWeighted(gray, 1.0 + amount, blurred, -amount, 0)


def upscale(gray: np.ndarray, factor: float) -> np.ndarray:
    return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def code_centre_line(gray: np.ndarray, bins: int = 24) -> np.ndarray | None:
    """Per column, the row at the middle of the code's bars (a quadratic fit), or None if none is found.

    Bars are vertical: their edges are strong horizontal gradients. Per vertical slice of the cut-out we take
    the rows where that gradient energy is high, keep the longest run through the strongest row, and fit a
    quadratic through the runs' middles (weighted by strength, one round of outlier rejection).
    """
    h, w = gray.shape
    if w < 2 * bins or h < 16:
        return None
    gx = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3))
    energy = cv2.boxFilter(gx, -1, (max(3, w // 60), 3))
    edges = np.linspace(0, w, bins + 1).astype(int)
    prof = np.stack([energy[:, a:b].mean(axis=1) for a, b in itertools.pairwise(edges)])
    peak = prof.max(axis=1)
    top = float(peak.max())
    if top <= 0:
        return None
    xs, mids, heights, weights = [], [], [], []
    for i in range(bins):
        if peak[i] < 0.35 * top:
            continue
        above = prof[i] > 0.5 * peak[i]
        j = int(np.argmax(prof[i]))
        lo, hi = j, j
        while lo > 0 and above[lo - 1]:
            lo -= 1
        while hi < h - 1 and above[hi + 1]:
            hi += 1
        if hi - lo < 6 or hi - lo > 0.95 * h:
            continue
        xs.append((edges[i] + edges[i + 1]) / 2)
        mids.append((lo + hi) / 2)
        heights.append(hi - lo)
        weights.append(peak[i])
    if len(xs) < 6:
        return None
    x, y, wt = np.array(xs), np.array(mids), np.array(weights)
    tolerance = 0.15 * float(np.median(heights)) + 1.0
    keep = np.ones(len(x), bool)
    for _ in range(2):
        coef = np.polyfit(x[keep], y[keep], 2, w=wt[keep])
        keep = np.abs(np.polyval(coef, x) - y) < tolerance
        if keep.sum() < 6:
            return None
    # only trust the fit between the first and last slice that supports it
    support = x[keep]
    cols = np.clip(np.arange(w, dtype=np.float64), support.min(), support.max())
    return np.polyval(coef, cols)


def straighten(gray: np.ndarray, min_shift: float = 1.5) -> np.ndarray | None:
    """The cut-out with each column shifted so that the code's centre line is horizontal, or None when the
    line is already straight (within `min_shift` px) or cannot be found."""
    line = code_centre_line(gray)
    if line is None or float(line.max() - line.min()) < min_shift:
        return None
    h, w = gray.shape
    shift = (line - h / 2).astype(np.float32)
    map_x = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    map_y = np.arange(h, dtype=np.float32)[:, None] + shift[None, :]
    return cv2.remap(
        gray, np.ascontiguousarray(map_x), map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
