"""report.pdf: a human-readable rendering of the report model, photos embedded byte for byte.

Every piece of patient- or staff-supplied text is drawn with reportlab's plain text operators, never
through Paragraph, whose mini-markup (<font>, <img src=...>, entities) would otherwise be interpreted.
Photos are laid out as tiny placeholders and swapped for the real JPEGs while streaming the file out;
see pdf_stream for why.

Known limits: reportlab does no bidirectional reordering or Arabic shaping, so right-to-left text is
printed in logical order with unjoined letters; DejaVu has no CJK glyphs. report.json and report.xml
always carry the exact text.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image as PILImage
from reportlab import rl_config
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    Image,
    Indenter,
    PageBreak,
    PageTemplate,
    Spacer,
)

from kiosk.report.model import PURPOSES, Photo, Report
from kiosk.report.pdf_stream import Jpeg, placeholder_jpeg, write_with_images

log = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")  # Debian fonts-dejavu-core
_MARGIN = 15 * mm
_FOOTER = 8 * mm
_FRAME = (A4[0] - 2 * _MARGIN, A4[1] - 2 * _MARGIN - _FOOTER)
_LABEL_WIDTH = 42 * mm
_PHOTO_TEXT_RESERVE = 62 * mm  # heading and the first few fields stay on the photo's page
_SIGNATURE_BOX = (70 * mm, 25 * mm)
_MISSING = "—"


@dataclass(frozen=True)
class _Fonts:
    regular: str
    bold: str

    def has_glyph(self, char: str) -> bool:
        # Astral characters are refused even when the font has them: reportlab writes their ToUnicode
        # entries as 5 hex digits, so text extraction and search would return a different character.
        if ord(char) > 0xFFFF:
            return False
        font = pdfmetrics.getFont(self.regular)
        if isinstance(font, TTFont):
            return ord(char) in font.face.charToGlyph
        return char.encode("cp1252", "ignore") != b""


@functools.cache
def register_fonts(font_dir: Path = FONT_DIR) -> _Fonts:
    """DejaVu covers Latin, Greek, Cyrillic, Hebrew, Arabic and many symbols, but not CJK; characters it
    lacks are printed as U+FFFD so the gap is visible (report.json and report.xml keep the exact text)."""
    try:
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(font_dir / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(font_dir / "DejaVuSans-Bold.ttf")))
    except Exception:  # reportlab raises TTFError or plain IOError depending on the failure
        log.warning("DejaVu fonts missing from %s; report.pdf falls back to Helvetica (Latin-1)", font_dir)
        return _Fonts("Helvetica", "Helvetica-Bold")
    return _Fonts("DejaVuSans", "DejaVuSans-Bold")


class _Printable(dict[int, int | str]):
    """str.translate table: characters the font cannot show become U+FFFD (or "?" in the Helvetica
    fallback), cached per character so that a megabyte of text is translated at C speed."""

    def __init__(self, fonts: _Fonts) -> None:
        super().__init__()
        self._fonts = fonts
        self._replacement = "\ufffd" if fonts.has_glyph("\ufffd") else "?"

    def __missing__(self, codepoint: int) -> int | str:
        self[codepoint] = codepoint if self._fonts.has_glyph(chr(codepoint)) else self._replacement
        return self[codepoint]


@dataclass(frozen=True)
class _Style:
    font: str
    size: float
    label_font: str
    label_width: float
    printable: _Printable

    @property
    def leading(self) -> float:
        return self.size * 1.3


_TOKENS = re.compile(r"\s+|\S+")


def _wrap(text: str, style: _Style, width: float) -> list[str]:
    """Greedy line breaking at spaces, splitting words longer than a line anywhere; linear in the text
    length, unlike Paragraph, which stalls on a megabyte."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line, line_width = "", 0.0
        for token in _TOKENS.findall(paragraph.expandtabs(4).translate(style.printable)):
            token_width = pdfmetrics.stringWidth(token, style.font, style.size)
            if line_width + token_width <= width:
                line, line_width = line + token, line_width + token_width
            elif token.isspace():  # the line break replaces this run of spaces
                lines.append(line)
                line, line_width = "", 0.0
            else:
                if line:
                    lines.append(line)
                pieces = _break_word(token, style, width)
                lines.extend(pieces[:-1])
                line = pieces[-1]
                line_width = pdfmetrics.stringWidth(line, style.font, style.size)
        lines.append(line)
    return lines


def _break_word(word: str, style: _Style, width: float) -> list[str]:
    pieces, start, used = [], 0, 0.0
    char_width = functools.partial(pdfmetrics.stringWidth, fontName=style.font, fontSize=style.size)
    for i, char in enumerate(word):
        w = char_width(char)
        if used + w > width and i > start:
            pieces.append(word[start:i])
            start, used = i, 0.0
        used += w
    pieces.append(word[start:])
    return pieces


class _Text(Flowable):
    """A label and a wrapped plain-text value that splits across pages line by line."""

    def __init__(self, value: str | None, style: _Style, label: str = "", lines: Sequence[str] = ()) -> None:
        super().__init__()
        self.style, self.label = style, label
        # A continuation (value None) keeps the line breaks of the page it was split from: every frame in
        # this document has the same width.
        self._value, self._lines = value, list(lines)
        self._wrapped_width: float | None = None

    def _lines_for(self, avail_width: float) -> list[str]:
        if self._value is not None and avail_width != self._wrapped_width:
            self._lines = _wrap(self._value, self.style, avail_width - self.style.label_width)
            self._wrapped_width = avail_width
        return self._lines

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width = avail_width
        self.height = len(self._lines_for(avail_width)) * self.style.leading
        return self.width, self.height

    def split(self, avail_width: float, avail_height: float) -> list[Flowable]:
        lines = self._lines_for(avail_width)
        fit = int(avail_height // self.style.leading)
        if fit < 1 or fit >= len(lines):
            return []
        cont = "(cont.)" if self.label else ""
        return [_Text(None, self.style, self.label, lines[:fit]), _Text(None, self.style, cont, lines[fit:])]

    def draw(self) -> None:
        style, canvas = self.style, self.canv
        baseline = self.height - style.size
        if self.label:
            canvas.setFont(style.label_font, style.size)
            canvas.drawString(0, baseline, self.label)
        text = canvas.beginText(style.label_width, baseline)
        text.setFont(style.font, style.size, style.leading)
        for line in self._lines_for(self.width):
            text.textLine(line)
        canvas.drawText(text)


_RL_CONFIG_LOCK = threading.Lock()


@contextmanager
def _raw_image_streams() -> Iterator[None]:
    # reportlab ASCII85-encodes image streams unless told otherwise; the setting is global, so it is set and
    # restored under a lock (the station serves requests from several threads).
    with _RL_CONFIG_LOCK:
        saved = rl_config.useA85
        rl_config.useA85 = 0
        try:
            yield
        finally:
            rl_config.useA85 = saved


def write_report_pdf(report: Report, out: BinaryIO) -> None:
    """Write report.pdf to ``out``, front to back (it is never seeked or read), in memory that does not grow
    with the photos. Raises ValueError for a photo that cannot be embedded exactly as it is."""
    fonts = register_fonts()
    printable = _Printable(fonts)
    body = _Style(fonts.regular, 9.5, fonts.bold, _LABEL_WIDTH, printable)
    styles = {
        "title": _Style(fonts.bold, 16, fonts.bold, 0, printable),
        "heading": _Style(fonts.bold, 12, fonts.bold, 0, printable),
        "body": body,
    }
    jpegs = [_checked_jpeg(photo) for photo in report.photos]
    nonce = secrets.token_hex(16)

    layout = io.BytesIO()
    doc = BaseDocTemplate(
        layout,
        pagesize=A4,
        pageCompression=1,
        title=f"Wound photo report {report.report_id}",  # no patient data in document metadata
        creator="Clinical Photo Kiosk",
    )
    frame = Frame(_MARGIN, _MARGIN + _FOOTER, *_FRAME, 0, 0, 0, 0)  # no padding: _FRAME is the usable area
    footer = functools.partial(_footer, report=report, style=body)
    doc.addPageTemplates([PageTemplate("page", [frame], onPage=footer)])
    story = _summary(report, styles)
    for index, (photo, jpeg) in enumerate(zip(report.photos, jpegs, strict=True)):
        story += _photo_page(photo, jpeg, index, len(report.photos), nonce, styles)
    with _raw_image_streams():
        doc.build(story)
    write_with_images(layout.getvalue(), nonce, jpegs, out)


def _checked_jpeg(photo: Photo) -> Jpeg:
    jpeg = Jpeg.inspect(photo.jpeg)
    if (jpeg.width, jpeg.height) != (photo.width, photo.height):
        raise ValueError(
            f"{photo.id}: recorded as {photo.width}x{photo.height} but the JPEG is {jpeg.width}x{jpeg.height}"
        )
    return jpeg


def _show(value: object) -> str:
    if value is None or value == "":
        return _MISSING
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


_CONFIRMED_FROM = {"payload": "from the wristband", "fhir": "from the FHIR record", "typed": "typed"}


def _enum(value: str | None) -> str:
    return _MISSING if value is None else value.replace("_", " ")


def _summary(report: Report, styles: dict[str, _Style]) -> list[Flowable]:
    body = styles["body"]
    patient, staff, consent, station = report.patient, report.staff, report.consent, report.station

    def fields(*pairs: tuple[str, object]) -> list[Flowable]:
        return [_Text(_show(value), body, label) for label, value in pairs]

    def heading(text: str) -> list[Flowable]:
        return [Spacer(0, 4 * mm), _Text(text, styles["heading"]), Spacer(0, 1.5 * mm)]

    identified = _enum(patient.id_source) + (f" ({patient.barcode_format})" if patient.barcode_format else "")
    confirmed = _enum(patient.confirmed_by)
    if patient.confirmed_by and patient.confirmed_from:
        confirmed += f" ({_CONFIRMED_FROM[patient.confirmed_from]})"
    story: list[Flowable] = [_Text("Wound photo report", styles["title"]), Spacer(0, 3 * mm)]
    story += fields(
        ("Report ID", report.report_id),
        ("Created", report.created_at),
        ("Station", station.id),
        ("Device", station.device),
        ("Software", station.software_version),
    )
    story += heading("Staff member")
    story += fields(("Staff ID", staff.id), ("Name", staff.name), ("Role", staff.role))
    story += heading("Patient")
    story += fields(
        ("MRN", patient.mrn),
        ("Issuer", patient.issuer),
        ("Name", patient.name),
        ("Birth date", patient.birth_date),
        ("Identified by", identified),
        ("Confirmed by", confirmed),
    )
    story += heading("Consent")
    story += fields(
        ("Consenter", _enum(consent.consenter)),
        ("Consenter name", consent.consenter_name),
        ("Method", _enum(consent.method)),
        ("Witness", consent.witness_staff_id),
        *((_enum(p).capitalize(), "Yes" if consent.purposes[p] else "No") for p in PURPOSES),
        ("Exception reason", consent.exception_reason),
        ("Consent text", consent.text_version),
        ("Recorded at", consent.recorded_at),
    )
    if consent.signature_png:
        story += fields(("Signature", consent.signature_file))
        story += [Indenter(_LABEL_WIDTH), _signature(consent.signature_png), Indenter(-_LABEL_WIDTH)]
    if report.notes:
        story += heading("Notes")
        story += fields(("Notes", report.notes))
    return story


def _signature(png: bytes) -> Image:
    with PILImage.open(io.BytesIO(png)) as image:
        width, height = image.size
    scale = min(_SIGNATURE_BOX[0] / width, _SIGNATURE_BOX[1] / height)
    return Image(io.BytesIO(png), width * scale, height * scale, hAlign="LEFT")


def _photo_page(
    photo: Photo, jpeg: Jpeg, index: int, count: int, nonce: str, styles: dict[str, _Style]
) -> list[Flowable]:
    scale = min(_FRAME[0] / jpeg.width, (_FRAME[1] - _PHOTO_TEXT_RESERVE) / jpeg.height)
    # Drawn at the photo's aspect ratio; the placeholder's own pixel size is irrelevant to the layout.
    placeholder = Image(io.BytesIO(placeholder_jpeg(nonce, index)), jpeg.width * scale, jpeg.height * scale)
    site = photo.body_site
    pairs: list[tuple[str, object]] = [
        ("Body site", site and site.display),
        ("SNOMED CT", site and site.code),
        ("Laterality", site and site.laterality),
        ("Laterality code", site and site.laterality_code),
        ("View", site and site.view),
        ("Captured", photo.captured_at),
        ("Notes", photo.notes),
        ("File", photo.file),
        ("Pixels", f"{jpeg.width} × {jpeg.height}"),
        ("Size", f"{photo.size:,} bytes"),
        ("SHA-256", photo.sha256),
    ]
    return [
        PageBreak(),
        _Text(f"Photo {index + 1} of {count} ({photo.id})", styles["heading"]),
        Spacer(0, 2 * mm),
        placeholder,
        Spacer(0, 3 * mm),
        *(_Text(_show(value), styles["body"], label) for label, value in pairs),
    ]


def _footer(canvas: Canvas, doc: BaseDocTemplate, report: Report, style: _Style) -> None:
    mrn = report.patient.mrn.translate(style.printable)
    mrn = mrn if len(mrn) <= 40 else mrn[:39] + "…"
    canvas.saveState()
    canvas.setFont(style.font, 7.5)
    canvas.drawString(_MARGIN, _MARGIN, f"MRN {mrn} · report {report.report_id}")
    canvas.drawRightString(A4[0] - _MARGIN, _MARGIN, f"page {doc.page}")
    canvas.restoreState()
