"""Decode wristband and badge codes with zxing-cpp: the whole frame first, then rectified candidates.

Candidates (kiosk.scan.locate) are cut out upright and read in passes, cheapest first, each pass over all
candidates before the next starts: as cut out; straightened (each column shifted so a sagging or sheared
code's rows run horizontally) and sharpened; the same enlarged up to 2x (top 3 candidates only). See
kiosk.scan.enhance.

Never report a code that is not there: every symbology we accept carries its own check (Code 128's
checksum, Reed-Solomon in DataMatrix, PDF417, QR and Aztec), zxing-cpp drops results that fail it (we never
ask for `return_errors`), and results must have at least `min_length` characters (no wristband or badge id
is shorter; short reads are what texture can fake). Cut-outs are resampled and interpolated, and there a
blurred Code 128 can pass its mod-103 checksum with wrong digits, or a damaged PDF417/Aztec can be
"corrected" by Reed-Solomon into garbage (both seen in bench/scan.py at 640x480). So a code found on a
cut-out counts only if a second, independently resampled cut-out of the same region, put through the same
fix, decodes identically. A whole-frame PDF417 or Aztec read needs the same second look at its own region
(`Scanner._confirmed`), and two different reads in the same place cancel each other (`_without_conflicts`).

`Code.text` is patient data: it is excluded from repr() so that it cannot reach a log by accident.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import zxingcpp

from kiosk.scan import enhance, locate

BF = zxingcpp.BarcodeFormat
SUPPORTED = (BF.Code128, BF.DataMatrix, BF.PDF417, BF.QRCode, BF.Aztec)
_NAMES = {
    BF.Code128: "Code 128",
    BF.DataMatrix: "DataMatrix",
    BF.PDF417: "PDF417",
    BF.QRCode: "QR Code",
    BF.Aztec: "Aztec",
}
# The whole-frame pass skips zxing-cpp's inverted (light-on-dark) and downscaled retries: on the bench's
# frames they found nothing the plain pass did not, at ~35 % of its time. Such codes are not lost: the
# locator sees edges of either polarity and any size, and cut-outs are read with zxing-cpp's defaults
# (inverted DataMatrix, QR and Aztec bands decode there; inverted linear codes and PDF417 are not read by
# zxing-cpp 3.1 in either pass, before or after this change).
FRAME_PASS = {"try_invert": False, "try_downscale": False}
SECOND_LOOK = ("PDF417", "Aztec")  # see Scanner._confirmed
_GS1_NAMES = {BF.Code128: "GS1-128", BF.DataMatrix: "GS1 DataMatrix", BF.QRCode: "GS1 QR Code"}


@dataclass(frozen=True)
class Code:
    format: str  # "Code 128", "GS1-128", "DataMatrix", "GS1 DataMatrix", "PDF417", "QR Code", "Aztec", ...
    text: str = field(repr=False)  # raw content; GS1 element strings separated by GS (0x1d)
    gs1: bool = False
    symbology_id: str = ""
    corners: tuple[tuple[int, int], ...] = ()  # in the scanned frame's px (approximate for candidates)


@dataclass
class ScanResult:
    codes: list[Code]
    ms: float
    stage: str  # "frame", "candidates" or "none": which pass found them (for the bench and doctor)


class Scanner:
    def __init__(
        self,
        formats: tuple[zxingcpp.BarcodeFormat, ...] = SUPPORTED,
        min_length: int = 4,
        max_candidates: int = 6,
        use_locator: bool = True,
    ) -> None:
        self.formats = list(formats)
        self.min_length = min_length
        self.max_candidates = max_candidates
        self.use_locator = use_locator

    def scan(self, image: np.ndarray) -> ScanResult:
        """All codes found in a BGR or grey frame, de-duplicated, whole-frame results first."""
        start = time.perf_counter()
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        codes = [c for c in self._read(gray, offset=None, **FRAME_PASS) if self._confirmed(gray, c)]
        stage = "frame"
        if not codes and self.use_locator:
            stage = "candidates"
            codes = self._read_candidates(gray, locate.find_candidates(gray, self.max_candidates))
        unique = list({(c.format, c.text): c for c in codes}.values())
        return ScanResult(unique, (time.perf_counter() - start) * 1000, stage if unique else "none")

    def _confirmed(self, gray: np.ndarray, code: Code) -> bool:
        """A whole-frame read of a symbology that zxing-cpp reads from one look only (PDF417, Aztec) must
        be read again, identically, from its own region resampled at 1.3x.

        zxing-cpp already wants two agreeing rows for a linear code, and QR and DataMatrix carry format
        information under their own error correction; PDF417 and Aztec rest on one Reed-Solomon decode,
        which a blurred symbol can pass with the wrong content (seen at 640x480: a clean PDF417 read as
        garbage, whole frame, no other read to contradict it).
        """
        if code.format not in SECOND_LOOK or len(code.corners) < 4:
            return True
        x, y, w, h = cv2.boundingRect(np.int32(code.corners))
        pad = max(12, round(0.25 * max(w, h)))
        x0, y0 = max(0, x - pad), max(0, y - pad)
        region = gray[y0 : y + h + pad, x0 : x + w + pad]
        if region.size == 0:
            return False
        again = self._read(cv2.resize(region, None, fx=1.3, fy=1.3, interpolation=cv2.INTER_CUBIC), code)
        return any((c.format, c.text) == (code.format, code.text) for c in again)

    def _read_candidates(self, gray: np.ndarray, cands: list[locate.Candidate]) -> list[Code]:
        """Cheap passes over every candidate before expensive ones; the first confirmed read wins."""
        crops: dict[int, np.ndarray] = {}
        for fix, reach in PASSES:
            for i, cand in enumerate(cands[:reach]):
                if i not in crops:
                    crops[i] = locate.rectify(gray, cand)
                view = fix(crops[i])
                if view is None:
                    continue
                codes = self._read(view, offset=cand)
                if not codes:
                    continue
                # confirm on a second, independently resampled cut-out put through the same fix
                second = fix(locate.rectify(gray, cand, resample=1.3))
                again = set() if second is None else {(c.format, c.text) for c in self._read(second, cand)}
                codes = [c for c in codes if (c.format, c.text) in again]
                if codes:
                    return codes
        return []

    def _read(self, gray: np.ndarray, offset: locate.Candidate | Code | None, **options: bool) -> list[Code]:
        results = zxingcpp.read_barcodes(
            gray, formats=self.formats, text_mode=zxingcpp.TextMode.Plain, **options
        )
        results = [r for r in results if r.valid and r.error is None and len(r.text) >= self.min_length]
        results = _without_conflicts(results)
        codes = []
        for r in results:
            gs1 = r.content_type == zxingcpp.ContentType.GS1
            name = (_GS1_NAMES if gs1 else _NAMES).get(r.format, str(r.format))
            if offset is None:
                p = r.position
                corners = tuple(
                    (pt.x, pt.y) for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
                )
            elif isinstance(offset, Code):
                corners = offset.corners
            else:
                cx, cy = offset.center
                corners = ((round(cx), round(cy)),)
            codes.append(Code(name, r.text, gs1, r.symbology_identifier, corners))
        return codes


def _quad(r: zxingcpp.Barcode) -> np.ndarray:
    p = r.position
    return np.float32([(q.x, q.y) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)])


def _without_conflicts(results: list[zxingcpp.Barcode]) -> list[zxingcpp.Barcode]:
    """Drop every result that overlaps a result with different content.

    Two symbols cannot occupy the same place, so one of the two is a misread (seen: zxing-cpp decoding a
    narrow strip of a clean PDF417 into garbage beside the correct read of the whole symbol). Which one is
    wrong is not knowable here, so neither is reported; the next frame or cut-out gets another chance.
    """
    quads = [_quad(r) for r in results]
    centres = [q.mean(axis=0) for q in quads]
    bad = set()
    for i, j in itertools.combinations(range(len(results)), 2):
        if (results[i].format, results[i].text) == (results[j].format, results[j].text):
            continue
        inside = any(
            cv2.pointPolygonTest(quads[a], (float(centres[b][0]), float(centres[b][1])), True) > -4
            for a, b in ((i, j), (j, i))
        )
        if inside:
            bad.update((i, j))
    return [r for k, r in enumerate(results) if k not in bad]


def _as_is(crop: np.ndarray) -> np.ndarray:
    return crop


def _straight_sharp(crop: np.ndarray) -> np.ndarray:
    straight = enhance.straighten(crop)
    return enhance.sharpen(crop if straight is None else straight, 2.5, 1.5)


LARGE_PIXELS = 1_200_000  # cap on an enlarged cut-out: about a 1280x960 frame's worth of decoding


def _straight_sharp_large(crop: np.ndarray) -> np.ndarray | None:
    straight = enhance.straighten(crop)
    straight = crop if straight is None else straight
    factor = min(2.0, (LARGE_PIXELS / straight.size) ** 0.5)
    if factor < 1.25:
        return None  # already large: enlarging further adds cost, not modules
    return enhance.sharpen(enhance.upscale(straight, factor), 1.5 * factor, 1.5)


# what is tried on the candidate cut-outs, cheapest first, each on the first `reach` candidates; a fix
# returns None when it has nothing to add
PASSES = ((_as_is, 99), (_straight_sharp, 99), (_straight_sharp_large, 3))

_default = Scanner()


def scan(image: np.ndarray) -> list[Code]:
    return _default.scan(image).codes
