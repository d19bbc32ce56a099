"""Builders for reports and the images in them, shared by the test modules."""

from __future__ import annotations

import functools
import io
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kiosk import fsutil
from kiosk.report.model import PURPOSES, BodySite, Consent, Patient, Report, Staff, Station, make_photo
from kiosk.sealing import passphrase
from kiosk.sealing.sealed_file import PassphraseSealer, SealedHeader, write_sealed

CREATED_AT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@functools.lru_cache(maxsize=32)
def make_jpeg(width: int, height: int, quality: int = 90, seed: int = 0, mode: str = "RGB") -> bytes:
    """A real baseline JPEG: colour gradients under noise, so it compresses like a photo rather than like a
    flat test card (1600x1200 at quality 95 is about 1.5 MB). Same arguments, same bytes."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width).astype(np.int16)[None, :]
    y = np.linspace(0, 255, height).astype(np.int16)[:, None]
    pixels = np.empty((height, width, 3), np.uint8)
    for channel, base in enumerate((x, y, (x + y) // 2)):  # a channel at a time keeps 12 MP light
        noise = rng.integers(-40, 41, size=(height, width), dtype=np.int16)
        pixels[..., channel] = np.clip(noise + base, 0, 255)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@functools.cache
def signature_png() -> bytes:
    """A pen stroke on a transparent 600x200 pad, as the signature pad produces."""
    image = Image.new("RGBA", (600, 200), (0, 0, 0, 0))
    points = [(40 + i * 8, 100 + int(60 * np.sin(i / 5))) for i in range(65)]
    ImageDraw.Draw(image).line(points, fill=(10, 20, 90, 255), width=4)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def sample_consent(**overrides: Any) -> Consent:
    fields: dict[str, Any] = {
        "consenter": "patient",
        "method": "written",
        "purposes": {purpose: purpose in ("clinical_care", "medical_record") for purpose in PURPOSES},
        "text_version": "wound-photo-consent-2024-03",
        "recorded_at": CREATED_AT,
        "signature_png": signature_png(),
    }
    return Consent(**{**fields, **overrides})


def sample_report(photo_count: int = 1, jpeg_size: tuple[int, int] = (640, 480), **overrides: Any) -> Report:
    """A valid report with ``photo_count`` distinct JPEGs; keyword arguments replace whole Report fields
    (model instances or dicts), e.g. ``sample_report(notes="x", patient={"mrn": "123"})``."""
    width, height = jpeg_size
    photos = [
        make_photo(
            index,
            make_jpeg(width, height, seed=index),
            width,
            height,
            CREATED_AT,
            body_site=BodySite(
                code="30021000",
                display="Lower leg structure",
                laterality="left",
                laterality_code="7771000",
                view="front",
            ),
            notes=f"Venous ulcer, medial aspect, photo {index}",
        )
        for index in range(1, photo_count + 1)
    ]
    fields: dict[str, Any] = {
        "created_at": CREATED_AT,
        "station": Station(id="station-01", device="Raspberry Pi Camera Module 3", software_version="0.1.0"),
        "staff": Staff(id="RN-1234", name="Alex Morgan", role="Registered nurse"),
        "patient": Patient(
            mrn="MRN0012345",
            issuer="Example General Hospital",
            name="Jamie Rivera",
            birth_date=date(1950, 1, 2),
            id_source="barcode",
            barcode_format="DataMatrix",
            confirmed_by="birth_date",
        ),
        "consent": sample_consent(),
        "photos": photos,
    }
    return Report(**{**fields, **overrides})


OUTBOX_PASSPHRASE = "Zk3q-9vLr_xW2pT7mN4bY8cH1jF6sD0gA5eU"


def seal_placeholder(path: Path, report_id: str) -> SealedHeader:
    """A small sealed report (passphrase OUTBOX_PASSPHRASE) written atomically at path, as the outbox keeps
    them."""
    with fsutil.atomic_writer(path) as handle:
        return write_sealed(
            handle,
            lambda sink: sink.write(b"bundle bytes"),
            PassphraseSealer(OUTBOX_PASSPHRASE),
            report_id=report_id,
            station_id="wound-clinic-1",
            created_at="2026-11-22T10:00:00Z",
        )


def folder_station_toml(tmp_path: Path, extra: str = "") -> tuple[str, Path]:
    """A station's kiosk.toml text with one passphrase-sealed folder destination "share" (and extra TOML
    appended), and the passphrase file it uses."""
    key_file = tmp_path / "share.key"
    passphrase.write_new_file(key_file)
    (tmp_path / "share").mkdir()
    text = f"""
[station]
id = "wound-clinic-1"
data_dir = "{tmp_path / "data"}"

[[destination]]
name = "share"
type = "folder"
path = "{tmp_path / "share"}"
encryption = "passphrase"
passphrase_file = "{key_file}"
"""
    return text + extra, key_file
