"""The report bundle: the zip a clinic receives once a sealed report is opened.

    report.json  report.xml  report.pdf  photos/photo-01.jpg ...  consent/signature.png (written consent)

It is written as a stream (the sink is the RNCryptor encryptor), so sealing never holds a second copy of
the photos. Reading is strict: only the names above, bounded sizes, and a report.json that validates.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from kiosk.report.document import report_json, report_xml
from kiosk.report.model import Report
from kiosk.report.pdf import write_report_pdf
from kiosk.sealing.sealed_file import ZIP_ERRORS

_ALLOWED_NAME = re.compile(r"^(report\.(json|xml|pdf)|photos/photo-\d{2,3}\.jpg|consent/signature\.png)$")
_REQUIRED = ("report.json", "report.xml", "report.pdf")
MAX_ENTRY_BYTES = 512 * 1024 * 1024


class InvalidBundle(ValueError):
    pass


def _entry(name: str, report: Report, compress: bool) -> zipfile.ZipInfo:
    # The report's own creation time, not the machine's local clock, so bundles carry no extra metadata.
    info = zipfile.ZipInfo(name, date_time=report.created_at.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16
    return info


def write_bundle(report: Report, sink: BinaryIO) -> None:
    with zipfile.ZipFile(sink, "w") as bundle:
        bundle.writestr(_entry("report.json", report, compress=True), report_json(report))
        bundle.writestr(_entry("report.xml", report, compress=True), report_xml(report))
        with bundle.open(_entry("report.pdf", report, compress=False), "w") as pdf:
            write_report_pdf(report, pdf)  # type: ignore[arg-type]
        for photo in report.photos:
            bundle.writestr(_entry(photo.file, report, compress=False), photo.jpeg)
        if report.consent.signature_png and report.consent.signature_file:
            bundle.writestr(
                _entry(report.consent.signature_file, report, compress=False), report.consent.signature_png
            )


def read_bundle(data: bytes) -> dict[str, bytes]:
    """The entries of a decrypted bundle, validated; nothing is written anywhere."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as bundle:
            infos = bundle.infolist()
            names = [info.filename for info in infos]
            bad = [n for n in names if not _ALLOWED_NAME.match(n)]
            if bad or len(set(names)) != len(names):
                raise InvalidBundle(f"the report contains unexpected files: {', '.join(bad) or 'duplicates'}")
            missing = [n for n in _REQUIRED if n not in names]
            if missing:
                raise InvalidBundle(f"the report is missing {', '.join(missing)}")
            if any(info.file_size > MAX_ENTRY_BYTES for info in infos):
                raise InvalidBundle("the report contains an implausibly large file")
            entries = {info.filename: bundle.read(info) for info in infos}
    except InvalidBundle:
        raise
    except ZIP_ERRORS as exc:
        raise InvalidBundle(f"the report bundle is damaged ({type(exc).__name__})") from exc
    try:
        listed = json.loads(entries["report.json"])
        expected = {p["file"] for p in listed["photos"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidBundle("report.json is not a valid report") from exc
    present = {n for n in entries if n.startswith("photos/")}
    if expected != present:
        raise InvalidBundle("the photos in the report do not match report.json")
    return entries


def extract_bundle(entries: dict[str, bytes], out_dir: Path) -> list[Path]:
    """Write the entries into ``out_dir``, which must not exist yet; all or nothing."""
    out_dir = out_dir.resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".opening-", dir=out_dir.parent))
    try:
        for name, data in entries.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(out_dir / name for name in entries)
