"""kiosk.report.jpeg_strip: lossless metadata removal, orientation correction and rejection of bad input.

Every JPEG here is made by Pillow and then loaded with the metadata a phone or camera would add (EXIF with
GPS, XMP, IPTC, comments, MPF, thumbnails, vendor APPn, trailing bytes); exiftool is the independent judge.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps

from kiosk.report.jpeg_strip import (
    CleanJpeg,
    InvalidPhoto,
    prepare_photo,
    read_orientation,
    read_photo,
    strip_metadata,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("exiftool") and shutil.which("jpegtran")),
    reason="needs exiftool and jpegtran: run scripts/setup-system.sh",
)

NAME = "wound-0042.jpg"
# Strings planted in metadata; none of them may survive.
CANARIES = [b"Jane Doe", b"PiCam", b"CANARY-TRAILER", b"CANARY-COM", b"CANARY-APP"]
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# jpegtran operation that undoes each orientation's correction (all are their own inverse except 6/8).
INVERSE_OPS = {
    2: ["-flip", "horizontal"],
    3: ["-rotate", "180"],
    4: ["-flip", "vertical"],
    5: ["-transpose"],
    6: ["-rotate", "270"],
    7: ["-transverse"],
    8: ["-rotate", "90"],
}


# --- building test JPEGs ---------------------------------------------------------------------------------


def natural(width: int, height: int, mode: str = "RGB", seed: int = 1) -> Image.Image:
    """Gradients plus noise: real AC coefficients everywhere, and no symmetry."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, ((x + 2 * y) % 64) * 4], -1)
    rgb = rgb + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").convert(mode)


def blocks(width: int, height: int, mode: str = "RGB", seed: int = 2) -> Image.Image:
    """Flat random 8x8 blocks: only DC coefficients, so any decoder's IDCT is exact and transposes exactly."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    pixels = cells.repeat(8, 0).repeat(8, 1)[:height, :width]
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB").convert(mode)


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def splice(jpeg: bytes, *segments: bytes) -> bytes:
    """Insert segments right after SOI, where cameras put their metadata."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def exif_block(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PiCam"
    exif[ExifTags.Base.DateTime] = "2024:05:01 10:11:12"
    if orientation != 1:
        exif[ExifTags.Base.Orientation] = orientation
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 0.0)})
    return exif.tobytes()


XMP = segment(
    0xE1,
    b"http://ns.adobe.com/xap/1.0/\0"
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""'
    b' xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li>'
    b'</rdf:Seq></dc:creator></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>',
)


def iptc_segment() -> bytes:
    def dataset(number: int, value: bytes) -> bytes:
        return b"\x1c\x02" + bytes([number]) + len(value).to_bytes(2, "big") + value

    iptc = dataset(0, b"\x00\x04") + dataset(5, b"Jane Doe") + dataset(120, b"Wound left heel")
    iptc += b"\0" * (len(iptc) % 2)
    resource = b"8BIM\x04\x04\0\0" + len(iptc).to_bytes(4, "big") + iptc
    return segment(0xED, b"Photoshop 3.0\0" + resource)


def mpf_segment() -> bytes:
    """The MPF APP2 segment of a real two-image MPO, as phones write for depth or preview images."""
    mpo = encode(natural(16, 16), "MPO", save_all=True, append_images=[natural(8, 8)])
    start = mpo.index(b"\xff\xe2")
    return mpo[start : start + 2 + int.from_bytes(mpo[start + 2 : start + 4], "big")]


METADATA = [
    XMP,
    iptc_segment(),
    segment(0xE0, b"JFXX\0\x13\x01\x01" + b"\x80" * 3),  # JFXX RGB thumbnail extension
    mpf_segment(),  # announces a second image that the trailing bytes do not hold
    segment(0xE2, b"FPXR\0\0" + b"\0" * 16),  # FlashPix
    segment(0xE3, b"CANARY-APP3"),
    segment(0xEE, b"CANARY-APP14"),  # APP14 that is not Adobe's
    segment(0xEF, b"CANARY-APP15"),
    segment(0xFE, b"CANARY-COM"),
]


def camera_jpeg(image: Image.Image, orientation: int = 1, icc: bool = True, **options: object) -> bytes:
    """A JPEG as a camera or phone would deliver it: every kind of metadata, and bytes after EOI."""
    extra: dict[str, object] = {"icc_profile": SRGB} if icc and image.mode == "RGB" else {}
    jpeg = encode(image, exif=exif_block(orientation), comment=b"Jane Doe", **extra, **options)
    return splice(jpeg, *METADATA) + b"CANARY-TRAILER" + b"\0" * 64


def decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert(image.mode))


def exiftool(jpeg: bytes) -> dict[str, object]:
    run = subprocess.run(
        ["exiftool", "-j", "-a", "-u", "-G0:1", "-"], input=jpeg, capture_output=True, check=True
    )
    return json.loads(run.stdout)[0]


def app_segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, first payload bytes) of every APPn/COM segment before the first SOS."""
    found, pos = [], 2
    while jpeg[pos + 1] != 0xDA:
        marker, length = jpeg[pos + 1], int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            found.append((marker, jpeg[pos + 4 : pos + 16]))
        pos += 2 + length
    return found


def jpegtran(jpeg: bytes, *args: str) -> bytes:
    return subprocess.run(["jpegtran", *args], input=jpeg, capture_output=True, check=True).stdout


# --- lossless stripping ------------------------------------------------------------------------------------

FORMS = {
    "420": ("RGB", {"subsampling": 2}),
    "422": ("RGB", {"subsampling": 1}),
    "444": ("RGB", {"subsampling": 0}),
    "gray": ("L", {}),
    "cmyk": ("CMYK", {}),
    "420-restart-rows": ("RGB", {"subsampling": 2, "restart_marker_rows": 1}),
    "444-restart-blocks": ("RGB", {"subsampling": 0, "restart_marker_blocks": 3}),
}


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("form", FORMS)
def test_pixels_identical_and_metadata_gone(form: str, progressive: bool) -> None:
    mode, options = FORMS[form]
    original = camera_jpeg(natural(83, 61, mode), quality=88, progressive=progressive, **options)
    stripped = strip_metadata(original, NAME)

    assert np.array_equal(decode(stripped), decode(original))
    assert stripped.endswith(b"\xff\xd9") and len(stripped) < len(original)
    assert not any(canary in stripped for canary in CANARIES)
    assert strip_metadata(stripped) == stripped  # idempotent: nothing left to remove
    if "restart" in form:
        assert b"\xff\xdd" in stripped and b"\xff\xd0" in stripped  # DRI kept, RSTn copied with the scan
    if progressive:
        assert stripped.count(b"\xff\xda") > 1

    kept = {(marker, payload[:5]) for marker, payload in app_segments(stripped)}
    allowed = {(0xE0, b"JFIF\0"), (0xE2, b"ICC_P"), (0xEE, b"Adobe")}
    assert kept <= allowed
    if mode == "CMYK":
        assert (0xEE, b"Adobe") in kept


def test_exiftool_finds_no_metadata_but_colour_information_is_kept() -> None:
    original = camera_jpeg(natural(64, 48), orientation=1)
    before, after = exiftool(original), exiftool(strip_metadata(original, NAME))
    # The fixture is only meaningful if exiftool sees all of it in the original.
    for group in ("EXIF", "GPS", "XMP", "IPTC", "MPF", "JFXX", "ICC_Profile", "JFIF"):
        assert any(f":{group}:" in f":{key}" for key in before), group
    assert "File:Comment" in before

    # Whatever exiftool reports must come from the groups we keep; the File group must not mention
    # anything (comment, EXIF byte order, IPTC digest) beyond the image's own geometry.
    allowed = {"SourceFile", "ExifTool", "File", "JFIF", "ICC_Profile", "APP14", "Composite"}
    assert {key.split(":")[0] for key in after} <= allowed
    file_tags = {key.split(":")[-1] for key in after if key.startswith("File:") and ":System:" not in key}
    assert file_tags <= {"FileType", "FileTypeExtension", "MIMEType", "ImageWidth", "ImageHeight"} | {
        "EncodingProcess",
        "BitsPerSample",
        "ColorComponents",
        "YCbCrSubSampling",
    }
    composite = {key for key in after if key.startswith("Composite:")}
    assert composite <= {"Composite:ImageSize", "Composite:Megapixels"}
    assert "ExifTool:Warning" not in after
    assert not {key for key in after if key.startswith("JFIF:") and ":JFXX:" in key}
    assert any(key.startswith("ICC_Profile:") for key in after)
    assert any(key.startswith("JFIF:") for key in after)


def test_icc_profile_unchanged() -> None:
    stripped = strip_metadata(camera_jpeg(natural(64, 48)))
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.info["icc_profile"] == SRGB


def test_adobe_app14_kept_for_cmyk() -> None:
    original = camera_jpeg(natural(40, 32, "CMYK"))
    after = exiftool(strip_metadata(original))
    assert any(key.startswith("APP14:") for key in after)
    assert not any(key.startswith(("EXIF:", "XMP:", "IPTC:")) for key in after)


def test_mpo_secondary_image_after_eoi_is_dropped() -> None:
    first, second = natural(64, 48, seed=3), natural(64, 48, seed=4)
    mpo = encode(first, "MPO", save_all=True, append_images=[second], exif=exif_block())
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    stripped = strip_metadata(mpo)

    assert b"MPF\0" not in stripped and stripped.count(b"\xff\xd8") == 1
    assert stripped.endswith(b"\xff\xd9")
    with Image.open(io.BytesIO(mpo)) as image:
        assert np.array_equal(decode(stripped), np.asarray(image.convert("RGB")))
    assert not {key.split(":")[0] for key in exiftool(stripped)} & {"MPF", "EXIF"}


def test_fill_bytes_and_trailing_garbage() -> None:
    jpeg = encode(natural(32, 32))
    # 0xFF fill bytes are legal before any marker, including between the last scan and EOI.
    padded = jpeg[:2] + b"\xff\xff" + jpeg[2:-2] + b"\xff\xff\xff\xd9" + b"\xff\xd8garbage\xff\xd9"
    stripped = strip_metadata(padded)
    assert np.array_equal(decode(stripped), decode(jpeg))
    assert stripped == jpeg  # fill bytes normalised away, nothing after EOI


# --- orientation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(2, 9))
def test_orientation_exact_on_mcu_aligned_image(orientation: int) -> None:
    original = camera_jpeg(blocks(64, 48), orientation, quality=100, subsampling=0)
    assert read_orientation(original) == orientation
    clean = prepare_photo(original, NAME)

    with Image.open(io.BytesIO(original)) as image:
        upright = np.asarray(ImageOps.exif_transpose(image))
    assert np.array_equal(decode(clean.jpeg), upright)
    assert (clean.width, clean.height) == ((48, 64) if orientation >= 5 else (64, 48))
    assert clean.original_orientation == orientation and not clean.trimmed
    assert read_orientation(clean.jpeg) == 1 and b"Exif" not in clean.jpeg
    assert not any(canary in clean.jpeg for canary in CANARIES)
    with Image.open(io.BytesIO(clean.jpeg)) as image:
        assert image.info["icc_profile"] == SRGB


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_orientation_lossless_on_natural_420_image(orientation: int, progressive: bool) -> None:
    original = camera_jpeg(natural(64, 48), orientation, quality=85, progressive=progressive)
    clean = prepare_photo(original, NAME)

    # jpegtran moves DCT coefficients, so undoing its operation restores the very same pixels...
    restored = jpegtran(clean.jpeg, "-perfect", *INVERSE_OPS[orientation])
    assert np.array_equal(decode(restored), decode(original))
    # ...while the decoder's rounding (chroma upsampling, IDCT order) is not mirror-symmetric, so the
    # upright photo matches Pillow's pixel rotation only to within a few levels.
    with Image.open(io.BytesIO(original)) as image:
        upright = np.asarray(ImageOps.exif_transpose(image)).astype(int)
    assert np.abs(decode(clean.jpeg).astype(int) - upright).max() <= 4
    assert not any(canary in clean.jpeg for canary in CANARIES)


def test_orientation_on_partial_mcu_image_trims_one_edge() -> None:
    # 100x75 with 8x8 MCUs: rotating 90 degrees clockwise would move the partial bottom row to the left edge.
    original = camera_jpeg(blocks(100, 75), 6, quality=100, subsampling=0)
    clean = prepare_photo(original, NAME)

    assert clean.trimmed and (clean.width, clean.height) == (72, 100)
    with Image.open(io.BytesIO(original)) as image:
        upright = np.asarray(ImageOps.exif_transpose(image))  # 75 wide: the first 3 columns are trimmed
    assert np.array_equal(decode(clean.jpeg), upright[:, 3:])


def test_orientation_on_partial_mcu_420_image() -> None:
    # 16x16 MCUs; rotating 270 degrees clockwise would move the partial right column (4 px) to the top.
    original = camera_jpeg(natural(100, 75), 8)
    clean = prepare_photo(original, NAME)
    assert clean.trimmed and (clean.width, clean.height) == (75, 96)
    assert clean.original_orientation == 8
    # Chroma upsampling of the new edge pixel row no longer sees the trimmed neighbour; all else is as before.
    restored = decode(jpegtran(clean.jpeg, "-perfect", *INVERSE_OPS[8]))
    assert np.array_equal(restored[:, :95], decode(original)[:, :95])
    with Image.open(io.BytesIO(original)) as image:
        upright = np.asarray(ImageOps.exif_transpose(image)).astype(int)
    assert np.abs(decode(clean.jpeg).astype(int)[1:] - upright[5:]).max() <= 4


def test_upright_photo_is_only_stripped() -> None:
    original = camera_jpeg(natural(64, 48), 1)
    clean = prepare_photo(original, NAME)
    assert clean == CleanJpeg(strip_metadata(original), 64, 48, 1, False)


def test_read_orientation_defaults_to_1() -> None:
    assert read_orientation(encode(natural(16, 16))) == 1
    assert read_orientation(b"not an image") == 1
    broken_exif = splice(encode(natural(16, 16)), segment(0xE1, b"Exif\0\0MM\0*\xff\xff"))
    assert read_orientation(broken_exif) == 1


# --- rejection ---------------------------------------------------------------------------------------------

GOOD = encode(natural(64, 48), progressive=False)


def without_segment(jpeg: bytes, marker: int) -> bytes:
    pos = jpeg.index(bytes([0xFF, marker]))
    return jpeg[:pos] + jpeg[pos + 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big") :]


def with_length(jpeg: bytes, marker: int, length: int) -> bytes:
    pos = jpeg.index(bytes([0xFF, marker])) + 2
    return jpeg[:pos] + length.to_bytes(2, "big") + jpeg[pos + 2 :]


BAD = {
    "empty": (b"", "is empty"),
    "png": (encode(natural(8, 8), "PNG"), "is not a JPEG image (it looks like a PNG file)"),
    "random": (np.random.default_rng(5).bytes(5000), "is not a JPEG image"),
    "soi-then-random": (b"\xff\xd8" + np.random.default_rng(6).bytes(5000), "damaged or incomplete"),
    "soi-only": (GOOD[:2], "damaged or incomplete"),
    "inside-a-header": (GOOD[:30], "damaged or incomplete"),
    "half-way": (GOOD[: len(GOOD) // 2], "damaged or incomplete"),
    "just-before-eoi": (GOOD[:-2], "damaged or incomplete"),
    "half-an-eoi": (GOOD[:-1], "damaged or incomplete"),
    "eoi-replaced-by-garbage": (GOOD[:-2] + b"\0" * 100, "damaged or incomplete"),
    "length-too-long": (with_length(GOOD, 0xDB, 0xFFFF), "out of bounds"),
    "length-too-short": (with_length(GOOD, 0xDB, 1), "out of bounds"),
    "no-frame-header": (without_segment(GOOD, 0xC0), "before the frame header"),
    "no-scan": (GOOD[: GOOD.index(b"\xff\xda")] + b"\xff\xd9", "no image data"),
    "two-frame-headers": (splice(GOOD, GOOD[GOOD.index(b"\xff\xc0") :][:19]), "two frame headers"),
    "zero-height": (GOOD.replace(b"\xff\xc0\0\x11\x08\0\x30", b"\xff\xc0\0\x11\x08\0\0"), "no width"),
    "unknown-marker": (splice(GOOD, segment(0xF7, b"LS")), "cannot handle (marker FFF7)"),
    # Structurally sound, but the frame uses a quantisation table that was never defined.
    "undecodable": (GOOD.replace(b"\x01\x22\0\x02\x11\x01", b"\x01\x22\3\x02\x11\x01"), "cannot be decoded"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_with_its_name(case: str) -> None:
    data, reason = BAD[case]
    assert data != GOOD
    with pytest.raises(InvalidPhoto) as refused:
        prepare_photo(data, NAME)
    assert NAME in str(refused.value) and reason in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_strip_metadata_refuses_too() -> None:
    with pytest.raises(InvalidPhoto, match="photo is damaged or incomplete"):
        strip_metadata(GOOD[:-2])


def test_missing_or_unreadable_file_is_named(tmp_path) -> None:
    with pytest.raises(InvalidPhoto, match=r"nothing\.jpg does not exist"):
        read_photo(tmp_path / "nothing.jpg")
    with pytest.raises(InvalidPhoto, match="cannot be read"):
        read_photo(tmp_path)
    (tmp_path / "good.jpg").write_bytes(camera_jpeg(natural(64, 48), 3))
    clean = read_photo(tmp_path / "good.jpg")
    assert clean.original_orientation == 3 and b"Jane Doe" not in clean.jpeg
    (tmp_path / "bad.jpg").write_bytes(GOOD[:100])
    with pytest.raises(InvalidPhoto, match=r"bad\.jpg is damaged"):
        read_photo(tmp_path / "bad.jpg")
