"""Decode wristband and badge codes with zxing-cpp: the whole frame first, then rectified candidates.

Never report a code that is not there: every symbology we accept carries its own check (Code 128's
checksum, Reed-Solomon in DataMatrix, PDF417, QR and Aztec), zxing-cpp drops results that fail it (we never
ask for `return_errors`), and results must have at least `min_length` characters (no wristband or badge id
is shorter; short reads are what texture can fake). Cut-outs are resampled and interpolated, and there a
blurred Code 128 can pass its mod-103 checksum with wrong digits, or a damaged PDF417/Aztec can be
"corrected" by Reed-Solomon into garbage (both seen in bench/scan.py at 640x480). So a code found on a
cut-out counts only if a second, independently resampled cut-out of the same region decodes identically.

`Code.text` is patient data: it is excluded from repr() so that it cannot reach a log by accident.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import zxingcpp

from kiosk.scan import locate

BF = zxingcpp.BarcodeFormat
SUPPORTED = (BF.Code128, BF.DataMatrix, BF.PDF417, BF.QRCode, BF.Aztec)
_NAMES = {
    BF.Code128: "Code 128",
    BF.DataMatrix: "DataMatrix",
    BF.PDF417: "PDF417",
    BF.QRCode: "QR Code",
    BF.Aztec: "Aztec",
}
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
        codes = self._read(gray, offset=None)
        stage = "frame"
        if not codes and self.use_locator:
            stage = "candidates"
            for cand in locate.find_candidates(gray, self.max_candidates):
                codes = self._read(locate.rectify(gray, cand), offset=cand)
                if codes:
                    again = {
                        (c.format, c.text) for c in self._read(locate.rectify(gray, cand, resample=1.3), cand)
                    }
                    codes = [c for c in codes if (c.format, c.text) in again]
                if codes:
                    break
        unique = list({(c.format, c.text): c for c in codes}.values())
        return ScanResult(unique, (time.perf_counter() - start) * 1000, stage if unique else "none")

    def _read(self, gray: np.ndarray, offset: locate.Candidate | None) -> list[Code]:
        results = zxingcpp.read_barcodes(gray, formats=self.formats, text_mode=zxingcpp.TextMode.Plain)
        codes = []
        for r in results:
            if not r.valid or r.error is not None:
                continue
            if len(r.text) < self.min_length:
                continue
            gs1 = r.content_type == zxingcpp.ContentType.GS1
            name = (_GS1_NAMES if gs1 else _NAMES).get(r.format, str(r.format))
            if offset is None:
                p = r.position
                corners = tuple(
                    (pt.x, pt.y) for pt in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
                )
            else:
                cx, cy = offset.center
                corners = ((round(cx), round(cy)),)
            codes.append(Code(name, r.text, gs1, r.symbology_identifier, corners))
        return codes


_default = Scanner()


def scan(image: np.ndarray) -> list[Code]:
    return _default.scan(image).codes
