"""Stream a reportlab PDF out while swapping placeholder images for the real JPEGs.

Why this exists: reportlab assembles the whole file in memory, so handing it twenty 12 MP photos would
hold each one at least twice (its stream object and the output buffer) on a Raspberry Pi that must seal a
report in bounded memory. Instead the layout is built with a tiny placeholder JPEG per photo; this module
then copies reportlab's objects to the output unchanged, except that each placeholder image object is
rewritten to describe the real photo and its stream is written straight from the photo's bytes in chunks.
Only the cross-reference table needs rebuilding, because object numbers, the trailer and every reference
stay the same; only byte offsets move.

It handles exactly what reportlab writes (one classic xref section, no incremental updates), and refuses
anything else rather than guess.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

PLACEHOLDER_PREFIX = b"cpk-placeholder:"
_CHUNK = 1 << 20
_COLOR_SPACES = {"RGB": b"/DeviceRGB", "L": b"/DeviceGray"}
_XREF_ENTRY = re.compile(rb"(\d{10}) (\d{5}) ([nf])")


@dataclass(frozen=True)
class Jpeg:
    """A JPEG to embed as-is; the PDF image dictionary is built from its own frame header."""

    data: bytes
    width: int
    height: int
    color_space: bytes

    @classmethod
    def inspect(cls, data: bytes) -> Jpeg:
        # Pillow only parses the headers here; the pixels are never decoded.
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"expected a JPEG, got {image.format}")
            if image.mode not in _COLOR_SPACES:
                # CMYK/YCCK JPEGs need an Adobe-specific /Decode guess that prints negatives when wrong;
                # the station's camera never produces them, so refuse instead.
                raise ValueError(f"unsupported JPEG colour mode {image.mode}; only RGB and greyscale")
            return cls(data, image.width, image.height, _COLOR_SPACES[image.mode])


def placeholder_jpeg(nonce: str, index: int) -> bytes:
    """A tiny JPEG standing in for photo ``index``, found again by the token in its COM segment. Its width
    differs per index because reportlab names (and de-duplicates) images by their decoded pixels."""
    out = io.BytesIO()
    Image.new("RGB", (index + 1, 1)).save(out, "JPEG", comment=_token(nonce, index))
    return out.getvalue()


def _token(nonce: str, index: int) -> bytes:
    return b"%s%s:%06d;" % (PLACEHOLDER_PREFIX, nonce.encode("ascii"), index)


def write_with_images(layout: bytes, nonce: str, images: Sequence[Jpeg], out: BinaryIO) -> None:
    """Copy ``layout`` (reportlab's output) to ``out``, replacing the placeholder made by
    ``placeholder_jpeg(nonce, i)`` with ``images[i]``."""
    pdf = memoryview(layout)
    xref_at, numbers_by_offset, generations = _read_xref(layout)
    trailer = layout[layout.index(b"trailer", xref_at) : layout.rindex(b"startxref")]
    if re.search(rb"/(Prev|XRefStm|Encrypt)\b", trailer):
        raise ValueError("incremental, hybrid or encrypted PDFs are not supported")

    offsets = sorted(numbers_by_offset)
    spans = list(zip(offsets, [*offsets[1:], xref_at], strict=True))
    replacements = _find_placeholders(layout, spans, nonce, images)

    sink = _CountingWriter(out)
    sink.write(pdf[: offsets[0]])
    new_offsets: dict[int, int] = {}
    for start, end in spans:
        number = numbers_by_offset[start]
        if not layout.startswith(b"%d %d obj" % (number, generations[number]), start):
            raise ValueError(f"xref entry of object {number} does not point at it")
        new_offsets[number] = sink.position
        jpeg = replacements.get(start)
        if jpeg is None:
            sink.write(pdf[start:end])
        else:
            _write_image_object(sink, number, generations[number], jpeg)

    xref_position = sink.position
    count = len(new_offsets) + 1
    sink.write(b"xref\n0 %d\n0000000000 65535 f \n" % count)
    sink.write(b"".join(b"%010d %05d n \n" % (new_offsets[n], generations[n]) for n in range(1, count)))
    sink.write(trailer)
    sink.write(b"startxref\n%d\n%%%%EOF\n" % xref_position)


def _read_xref(layout: bytes) -> tuple[int, dict[int, int], dict[int, int]]:
    """The xref offset, object number by byte offset, and generation by object number."""
    tail = layout[layout.rindex(b"startxref") :].split()
    xref_at = int(tail[1])
    header = layout[xref_at : xref_at + 64].split(b"\n", 2)
    if header[0].strip() != b"xref":
        raise ValueError("no classic cross-reference table at startxref")
    first, count = (int(v) for v in header[1].split())
    entries = _XREF_ENTRY.findall(layout, xref_at, layout.index(b"trailer", xref_at))
    kinds = [kind for _, _, kind in entries]
    if first != 0 or kinds != [b"f"] + [b"n"] * (count - 1):
        raise ValueError("expected one xref section with only object 0 free")
    numbers_by_offset = {int(offset): number for number, (offset, _, _) in enumerate(entries) if number}
    generations = {number: int(gen) for number, (_, gen, _) in enumerate(entries) if number}
    if len(numbers_by_offset) != count - 1:
        raise ValueError("two xref entries share an offset")
    return xref_at, numbers_by_offset, generations


def _find_placeholders(
    layout: bytes, spans: list[tuple[int, int]], nonce: str, images: Sequence[Jpeg]
) -> dict[int, Jpeg]:
    """Object start offset -> the JPEG replacing it. Each placeholder must sit in exactly one image object;
    the random nonce keeps anything else in the file from looking like one."""
    prefix = _token(nonce, 0)[: -len(b"000000;")]
    found: dict[int, Jpeg] = {}
    seen: set[int] = set()
    for start, end in spans:
        at = layout.find(prefix, start, end)
        if at < 0:
            continue
        match = re.match(rb"(\d{6});", layout[at + len(prefix) : at + len(prefix) + 7])
        index = int(match.group(1)) if match else -1
        if not 0 <= index < len(images) or b"/Subtype /Image" not in layout[start:at]:
            raise ValueError(f"unexpected placeholder at byte {at} of the layout PDF")
        if index in seen:
            raise ValueError(f"placeholder {index} appears twice in the layout PDF")
        seen.add(index)
        found[start] = images[index]
    if len(seen) != len(images):
        raise ValueError(f"{len(images) - len(found)} placeholder(s) missing from the layout PDF")
    return found


def _write_image_object(sink: _CountingWriter, number: int, generation: int, jpeg: Jpeg) -> None:
    sink.write(
        b"%d %d obj\n<<\n/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace %s"
        b" /BitsPerComponent 8 /Filter /DCTDecode /Length %d\n>>\nstream\n"
        % (number, generation, jpeg.width, jpeg.height, jpeg.color_space, len(jpeg.data))
    )
    data = memoryview(jpeg.data)
    for offset in range(0, len(data), _CHUNK):
        sink.write(data[offset : offset + _CHUNK])
    sink.write(b"\nendstream\nendobj\n")


class _CountingWriter:
    """Tracks the output position ourselves: the destination may be a pipe or an encrypting sink."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.position = 0

    def write(self, chunk: bytes | memoryview) -> None:
        written = self._out.write(chunk)
        if written is not None and written != len(chunk):
            raise OSError(f"short write: {written} of {len(chunk)} bytes")
        self.position += len(chunk)
