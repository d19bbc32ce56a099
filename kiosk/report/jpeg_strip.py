"""Lossless removal of metadata from clinical photos, with orientation correction.

A photo leaves the kiosk as a JPEG that carries pixels and colour information only: no EXIF (camera serial,
time, GPS), XMP, IPTC/Photoshop, MPF, comments, thumbnails or bytes after the end of the image. Nothing is
re-encoded: the entropy-coded data is copied byte for byte, so the decoded pixels are exactly the captured
ones, and a sideways photo is turned upright with ``jpegtran``, which moves DCT blocks instead of pixels.

The segment walker is written by hand on purpose: no well-kept Python library strips JPEG segments losslessly
(Pillow can only re-encode on save, piexif handles EXIF alone and is unmaintained), and the JPEG container is
simple enough that ~100 lines we can test are less risk than a dependency. Patient data never touches the
disk here: jpegtran reads stdin and writes stdout.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from dataclasses import dataclass

from PIL import Image

_SOI = b"\xff\xd8"
_EOI, _SOS, _COM = 0xD9, 0xDA, 0xFE
# SOF0..SOF15 share their range with DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Decoder tables and parameters: DHT, DAC, DQT, DNL, DRI, DHP, EXP. Any other non-APP marker is one that
# libjpeg refuses too, so the walker refuses it rather than guess whether it hides data.
_TABLES = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0..7 carry no length field
# The only APPn segments kept, by marker and identifier: JFIF (not its JFXX thumbnail extension), the ICC
# profile (colours of a wound photo matter), and Adobe APP14 (tells decoders how CMYK/RGB data is coded).
_KEEP_APP = {0xE0: b"JFIF\0", 0xE2: b"ICC_PROFILE\0", 0xEE: b"Adobe"}
# In entropy-coded data every 0xFF byte is followed by 0x00 (stuffing); RSTn markers and 0xFF fill bytes
# belong to the scan too. The first 0xFF followed by anything else is the marker that ends the scan. One
# regex search runs in C, so a 12 MP photo is scanned in milliseconds rather than a per-byte Python loop.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# EXIF orientation -> the lossless jpegtran operation that shows the photo upright.
_JPEGTRAN_OPS: dict[int, tuple[str, ...]] = {
    2: ("-flip", "horizontal"),
    3: ("-rotate", "180"),
    4: ("-flip", "vertical"),
    5: ("-transpose",),
    6: ("-rotate", "90"),
    7: ("-transverse",),
    8: ("-rotate", "270"),
}
# Formats people mistake for JPEG, so the error can say what the file is.
_OTHER_FORMATS = {b"\x89PNG": "PNG", b"GIF8": "GIF", b"II*\0": "TIFF", b"MM\0*": "TIFF", b"%PDF": "PDF"}


class InvalidPhoto(ValueError):
    """A photo the kiosk cannot accept; the message is written for the nurse or integrator who sees it."""


@dataclass(frozen=True)
class CleanJpeg:
    jpeg: bytes
    width: int
    height: int
    original_orientation: int  # EXIF orientation (1..8) found before stripping; 1 if there was none
    trimmed: bool = False  # jpegtran dropped a partial MCU row or column (usually < 16 px) at one edge


def strip_metadata(data: bytes, name: str = "photo") -> bytes:
    """Return the JPEG without metadata segments and trailing bytes; pixels are untouched."""
    return _walk(data, name)[0]


def read_orientation(data: bytes) -> int:
    """The EXIF orientation tag (0x0112) of a JPEG, or 1 if it is absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not block the photo: it is about to be removed anyway
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def prepare_photo(data: bytes, name: str = "photo") -> CleanJpeg:
    """Validate a captured JPEG, turn it upright losslessly and remove all metadata."""
    clean, size = _walk(data, name)  # structure first: cheap, and its messages are precise
    _check_decodes(clean, name)
    orientation = read_orientation(data)
    trimmed = False
    if orientation != 1:
        rotated, trimmed = _transform(clean, orientation, name)
        clean, size = _walk(rotated, name)  # jpegtran adds nothing we drop, but the output is checked anyway
    return CleanJpeg(clean, size[0], size[1], orientation, trimmed)


def read_photo(path: str | os.PathLike[str]) -> CleanJpeg:
    """``prepare_photo`` for a file; a missing or unreadable file is an InvalidPhoto naming it."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise InvalidPhoto(f"{name} does not exist") from exc
    except OSError as exc:
        raise InvalidPhoto(f"{name} cannot be read ({exc.strerror or exc})") from exc
    return prepare_photo(data, name)


def _walk(data: bytes, name: str) -> tuple[bytes, tuple[int, int]]:
    """Copy the segments a decoder needs and the scans, up to EOI; return them and (width, height)."""
    if not data:
        raise InvalidPhoto(f"{name} is empty (0 bytes)")
    if not data.startswith(_SOI):
        kind = next((f" (it looks like a {k} file)" for m, k in _OTHER_FORMATS.items() if data[:4] == m), "")
        raise InvalidPhoto(f"{name} is not a JPEG image{kind}")

    def damaged(why: str) -> InvalidPhoto:
        return InvalidPhoto(f"{name} is damaged or incomplete ({why})")

    view = memoryview(data)  # slices of a memoryview are not copies; join copies each byte once
    out: list[bytes | memoryview] = [_SOI]
    size: tuple[int, int] | None = None
    scanned = False
    pos, n = 2, len(data)
    while True:
        if pos >= n:
            raise damaged("the file ends before the end-of-image marker")
        if data[pos] != 0xFF:
            raise damaged(f"unexpected data at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos >= n:
            raise damaged("the file ends before the end-of-image marker")
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            if not scanned:
                raise damaged("it contains no image data")
            out.append(b"\xff\xd9")
            return b"".join(out), size  # type: ignore[return-value]  # a scan implies a frame header
        if marker in _STANDALONE:
            continue  # meaningless outside a scan; libjpeg ignores them as well
        if pos + 2 > n:
            raise damaged("the file ends inside a header")
        end = pos + int.from_bytes(data[pos : pos + 2])
        if end < pos + 2 or end > n:
            raise damaged(f"the segment length at byte {pos} is out of bounds")
        if marker in _SOF:
            if size is not None:
                raise damaged("it has two frame headers")
            if end - pos < 8:
                raise damaged("the frame header is too short")
            height, width = int.from_bytes(data[pos + 3 : pos + 5]), int.from_bytes(data[pos + 5 : pos + 7])
            if not width or not height:
                raise damaged("the frame header gives no width or height")
            size = (width, height)
        elif marker == _SOS:
            if size is None:
                raise damaged("image data comes before the frame header")
        elif 0xE0 <= marker <= 0xEF or marker == _COM:
            keep = _KEEP_APP.get(marker)
            if keep is None or not data.startswith(keep, pos + 2, end):
                pos = end
                continue
        elif marker not in _TABLES:
            raise InvalidPhoto(f"{name} uses a JPEG feature the kiosk cannot handle (marker FF{marker:02X})")
        out.append(view[pos - 2 : end])  # the marker without fill bytes, then the segment
        pos = end
        if marker == _SOS:
            found = _SCAN_END.search(data, pos)
            if found is None:
                raise damaged("the file ends inside the image data")
            stop = found.start()
            while stop > pos and data[stop - 1] == 0xFF:  # 0xFF 0xFF cannot be scan data: it is fill
                stop -= 1
            out.append(view[pos:stop])
            pos, scanned = stop, True


def _check_decodes(jpeg: bytes, name: str) -> None:
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            # Scaling by 1/8 happens in the IDCT; every scan is still entropy-decoded, so a broken photo fails
            # the same way as in a full decode, at a fraction of the time and memory on a Pi.
            image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidPhoto(f"{name} is damaged or cannot be decoded ({exc})") from exc


def _transform(jpeg: bytes, orientation: int, name: str) -> tuple[bytes, bool]:
    """Turn the JPEG upright with jpegtran; return it and whether an edge had to be trimmed."""
    for edge in ("-perfect", "-trim"):
        # -copy icc keeps the colour profile; JFIF/Adobe markers are written by libjpeg itself.
        command = ["jpegtran", "-copy", "icc", edge, *_JPEGTRAN_OPS[orientation]]
        try:
            run = subprocess.run(command, input=jpeg, capture_output=True, timeout=120, check=False)
        except FileNotFoundError as exc:
            raise RuntimeError(
                "jpegtran is not installed (Debian package libjpeg-turbo-progs); it turns photos upright"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise InvalidPhoto(f"{name} could not be turned upright (jpegtran took too long)") from exc
        if run.returncode == 0:
            return run.stdout, edge == "-trim"
        # -perfect fails when the width or height is not a whole number of MCUs; -trim then drops the
        # partial row/column at the edge that would otherwise end up on the wrong side.
        if edge != "-perfect" or b"not perfect" not in run.stderr:
            break
    why = run.stderr.decode(errors="replace").strip() or f"jpegtran exit status {run.returncode}"
    raise InvalidPhoto(f"{name} could not be turned upright ({why})")
