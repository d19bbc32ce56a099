"""report.json, report.xml and report.pdf: one model, three documents that agree and cannot be subverted."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import textwrap
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pypdf import PdfReader

from kiosk.report import document, pdf
from kiosk.report.document import build_schema, report_json, report_xml, validate, xml_to_dict
from kiosk.report.model import BodySite, Patient, Report, Staff, Station, make_photo
from kiosk.report.pdf import write_report_pdf
from tests.factories import CREATED_AT, make_jpeg, sample_consent, sample_report

MARKUP = [
    "<font size=80>X</font>",
    '<img src="/etc/passwd"/>',
    "&amp;",
    "<b>",
]
HOSTILE = [
    *MARKUP,
    "&lt; &#x41; & < > \" ' ]]> <![CDATA[x]]> <?pi x?> <!-- c --> <para>",
    "مرحبا שלום \u202eevil\u202c",
    "😀🩹 👩🏽‍⚕️",
    "漢字かなカナ 한국어",
    "e\u0301 n\u0303 Z\u0351\u0352",
    "line one\r\nline two\rline three\nfour\ttab  two  spaces ",
    "  padded  ",
    "\u2028\u2029\x85 separators \ufeff\u200b",
]


def _pdf_bytes(report: Report) -> bytes:
    out = io.BytesIO()
    write_report_pdf(report, out)
    return out.getvalue()


def _poppler(tmp_path: Path, data: bytes, *, pages: int | None = None) -> str:
    """pdftotext's output, after checking that both poppler tools read the file without complaint."""
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    limit = ["-f", "1", "-l", str(pages)] if pages else []
    text = subprocess.run(["pdftotext", *limit, str(path), "-"], capture_output=True, check=True)
    render = subprocess.run(
        ["pdftoppm", *limit, "-r", "10", "-gray", str(path), str(tmp_path / "page")],
        capture_output=True,
        check=True,
    )
    for result in (text, render):
        assert result.stderr == b"", result.stderr.decode(errors="replace")
    return text.stdout.decode("utf-8")


def _images(reader: PdfReader, page: int) -> list[Any]:
    xobjects = reader.pages[page]["/Resources"].get("/XObject", {})
    return [x.get_object() for x in xobjects.values() if x.get_object()["/Subtype"] == "/Image"]


def _assert_exact_xref(data: bytes) -> None:
    """Every in-use xref entry points at its own object: the offsets were rebuilt correctly."""
    xref_at = int(data[data.rindex(b"startxref") :].split()[1])
    assert data.startswith(b"xref\n", xref_at)
    entries = re.findall(rb"(\d{10}) (\d{5}) n", data[xref_at : data.index(b"trailer", xref_at)])
    assert entries
    for number, (offset, generation) in enumerate(entries, start=1):
        assert data.startswith(b"%d %d obj" % (number, int(generation)), int(offset)), number
    assert data.endswith(b"%%EOF\n")


def _hostile_report(text: str) -> Report:
    """``text`` in every free-text field a person can type or scan."""
    photo = (
        sample_report()
        .photos[0]
        .model_copy(
            update={"notes": text, "body_site": BodySite(code=text, display=text, laterality_code=text)}
        )
    )
    return sample_report(
        station=Station(id=text, device=text, software_version=text),
        staff=Staff(id=text, name=text, role=text),
        patient=Patient(mrn=text, issuer=text, name=text, barcode_format=text),
        consent=sample_consent(
            consenter="guardian",
            consenter_name=text,
            method="clinical_necessity",
            witness_staff_id=text,
            exception_reason=text,
            text_version=text,
        ),
        photos=[photo],
        notes=text,
    )


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return make_jpeg(4056, 3040)  # the HQ camera's 12 MP, about 6.5 MB


# --- schema -------------------------------------------------------------------------------------------------


def test_shipped_schema_matches_the_model() -> None:
    assert document.schema() == build_schema(), "regenerate it: python -m kiosk.report.document"
    jsonschema.Draft202012Validator.check_schema(document.schema())


@pytest.mark.parametrize(
    "report",
    [
        sample_report(photo_count=3),
        sample_report(
            staff=Staff(id="7"),
            patient=Patient(mrn="1"),
            consent=sample_consent(method="verbal", signature_png=None, witness_staff_id="RN-9"),
        ),
    ],
    ids=["full", "sparse"],
)
def test_json_validates_against_the_schema(report: Report) -> None:
    data = report_json(report)
    assert data == report_json(report) and data.endswith(b"\n")
    doc = json.loads(data)
    assert doc == report.public_dict()
    assert "jpeg" not in doc["photos"][0] and "signature_png" not in doc["consent"]
    validate(doc)


def test_schema_rejects_a_bad_document() -> None:
    doc = json.loads(report_json(sample_report()))
    doc["consent"]["purposes"]["research"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


# --- XML ----------------------------------------------------------------------------------------------------


def test_xml_shape() -> None:
    report = sample_report(photo_count=2, staff=Staff(id="RN-1"))
    root = ET.fromstring(report_xml(report))
    ns = "{urn:clinical-photo-kiosk:report:1}"
    assert root.tag == ns + "report" and root.get("schemaVersion") == "1.1"
    assert [e.tag for e in root.find(ns + "photos")] == [ns + "photo"] * 2
    assert root.find(f"{ns}staff/{ns}name") is None  # None is omitted
    assert root.find(f"{ns}consent/{ns}purposes/{ns}clinical_care").text == "true"
    assert root.find(f"{ns}photos/{ns}photo/{ns}width").text == "640"


@pytest.mark.parametrize("photo_count", [1, 3])
def test_xml_agrees_with_json(photo_count: int) -> None:
    report = sample_report(photo_count=photo_count, notes="", patient=Patient(mrn="M1", name=""))
    assert xml_to_dict(report_xml(report)) == json.loads(report_json(report))


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_round_trips_exactly(text: str) -> None:
    report = _hostile_report(text)
    expected = report.public_dict()
    assert expected["patient"]["name"] == text
    assert json.loads(report_json(report)) == expected
    assert xml_to_dict(report_xml(report)) == expected


def test_megabyte_text_round_trips() -> None:
    text = "wound " * 200_000 + "x" * 1_000_000
    report = sample_report(notes=text)
    assert json.loads(report_json(report))["notes"] == text
    assert xml_to_dict(report_xml(report))["notes"] == text


_VALID_XML = report_xml(sample_report()).decode()


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ('<!DOCTYPE r [<!ENTITY a "aaaa">]>' + _VALID_XML.split("?>", 1)[1], "DOCTYPE"),
        ('<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + _VALID_XML.split("?>", 1)[1], "DOCTYPE"),
        (_VALID_XML.replace("urn:clinical-photo-kiosk:report:1", "urn:other"), "version"),
        (_VALID_XML.replace('schemaVersion="1.1"', 'schemaVersion="2.0"'), "version"),
        (_VALID_XML.replace("<width>640</width>", "<width>6_40</width>"), "integer"),
        (_VALID_XML.replace("<research>false</research>", "<research>no</research>"), "boolean"),
        (_VALID_XML.replace("<mrn>", "<mrn><b/>"), "child"),
        (_VALID_XML.replace("</staff>", "<badge>1</badge></staff>"), "unexpected"),
        (_VALID_XML.replace("</staff>", "<role>x</role></staff>"), "repeated"),
        (_VALID_XML.replace("<mrn>MRN0012345</mrn>", ""), "missing mrn"),
        (_VALID_XML.replace("<photo>", "<item>", 1).replace("</photo>", "</item>", 1), "unexpected"),
    ],
    ids=[
        "entity",
        "external-entity",
        "namespace",
        "version",
        "integer",
        "boolean",
        "child",
        "unknown",
        "repeated",
        "missing",
        "item-name",
    ],
)
def test_xml_to_dict_refuses_what_report_xml_cannot_produce(xml: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        xml_to_dict(xml.encode())


# --- PDF ----------------------------------------------------------------------------------------------------


def test_pdf_embeds_every_jpeg_byte_for_byte(tmp_path: Path) -> None:
    jpegs = [(make_jpeg(640, 480, seed=1), 640, 480), (make_jpeg(480, 640, seed=2), 480, 640)]
    jpegs.append((make_jpeg(300, 200, seed=3, mode="L"), 300, 200))
    site = BodySite(code="40983000", display="Upper arm structure", laterality="right")
    photos = [
        make_photo(i, j, w, h, CREATED_AT, body_site=site) for i, (j, w, h) in enumerate(jpegs, start=1)
    ]
    data = _pdf_bytes(sample_report(photos=photos))

    assert b"cpk-placeholder" not in data
    _assert_exact_xref(data)
    reader = PdfReader(io.BytesIO(data), strict=True)
    assert len(reader.pages) == 1 + len(photos)
    for page, (jpeg, width, height) in enumerate(jpegs, start=1):
        (image,) = _images(reader, page)
        assert image["/Filter"] == "/DCTDecode"
        assert (image["/Width"], image["/Height"], image["/BitsPerComponent"]) == (width, height, 8)
        assert image["/ColorSpace"] == ("/DeviceGray" if page == 3 else "/DeviceRGB")
        assert image.get_data() == jpeg
    text = _poppler(tmp_path, data)
    for photo in photos:
        assert photo.sha256 in text and photo.file in text
    for expected in ("MRN0012345", "Jamie Rivera", "40983000", "Upper arm structure", "right", "DataMatrix"):
        assert expected in text


def test_pdf_with_a_12_megapixel_photo(tmp_path: Path, big_jpeg: bytes) -> None:
    report = sample_report(photos=[make_photo(1, big_jpeg, 4056, 3040, CREATED_AT)])
    data = _pdf_bytes(report)
    _assert_exact_xref(data)
    (image,) = _images(PdfReader(io.BytesIO(data), strict=True), 1)
    assert (image["/Width"], image["/Height"]) == (4056, 3040)
    assert image.get_data() == big_jpeg
    _poppler(tmp_path, data)


@pytest.mark.parametrize("text", MARKUP)
def test_pdf_prints_markup_literally(tmp_path: Path, text: str) -> None:
    text_out = _poppler(tmp_path, _pdf_bytes(_hostile_report(text)))
    assert text_out.count(text) >= 10  # once per field it sits in, proving it was not interpreted


def test_pdf_survives_every_hostile_string(tmp_path: Path) -> None:
    text = " ".join(HOSTILE)
    text_out = _poppler(tmp_path, _pdf_bytes(_hostile_report(text)))
    assert "e\u0301" in text_out and "<!-- c -->" in text_out


def test_pdf_megabyte_fields_wrap_and_paginate(tmp_path: Path) -> None:
    words = "wound bed granulating, slough <b>& αβγ "
    spaced = (words * (1_000_000 // len(words) + 1))[:1_000_000]
    unbroken = ("abcdefghij" * 100_000)[:999_999] + "Z"
    photo = sample_report().photos[0].model_copy(update={"notes": unbroken})
    started = time.monotonic()
    data = _pdf_bytes(sample_report(notes=spaced, photos=[photo]))
    assert time.monotonic() - started < 30
    pages = len(PdfReader(io.BytesIO(data)).pages)
    assert 100 < pages < 1000
    text_out = "".join(_poppler(tmp_path, data).split())
    assert "".join(spaced[:500].split()) in text_out
    assert unbroken[:1000] in text_out and unbroken[-50:] in text_out


def test_pdf_signature_only_with_one(tmp_path: Path) -> None:
    reader = PdfReader(io.BytesIO(_pdf_bytes(sample_report())))
    (signature,) = _images(reader, 0)
    assert (signature["/Width"], signature["/Height"]) == (600, 200)
    assert signature["/Filter"] != "/DCTDecode" and "/SMask" in signature  # the pad's transparency is kept

    verbal = sample_consent(method="verbal", signature_png=None, witness_staff_id="RN-9")
    data = _pdf_bytes(sample_report(consent=verbal))
    assert _images(PdfReader(io.BytesIO(data)), 0) == []
    assert "Signature" not in _poppler(tmp_path, data)


def test_pdf_refuses_photos_it_cannot_embed_faithfully() -> None:
    cmyk = make_jpeg(64, 48, mode="CMYK")
    with pytest.raises(ValueError, match="CMYK"):
        _pdf_bytes(sample_report(photos=[make_photo(1, cmyk, 64, 48, CREATED_AT)]))
    liar = make_photo(1, make_jpeg(64, 48), 48, 64, CREATED_AT)
    with pytest.raises(ValueError, match="48x64"):
        _pdf_bytes(sample_report(photos=[liar]))


def test_pdf_falls_back_to_helvetica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        fonts = pdf.register_fonts(tmp_path)
    assert fonts.regular == "Helvetica" and "falls back to Helvetica" in caplog.text
    monkeypatch.setattr(pdf, "register_fonts", lambda: fonts)
    text_out = _poppler(tmp_path, _pdf_bytes(_hostile_report(" ".join(HOSTILE))))
    assert "<font size=80>X</font>" in text_out


class _CountingSink:
    def __init__(self) -> None:
        self.count = 0

    def write(self, chunk: bytes | memoryview) -> int:
        self.count += len(chunk)
        return len(chunk)


def test_pdf_memory_does_not_grow_with_photos() -> None:
    photos = [make_photo(i, make_jpeg(2000, 1500, 95, seed=i), 2000, 1500, CREATED_AT) for i in range(1, 11)]
    total = sum(photo.size for photo in photos)
    assert total > 20_000_000
    report = sample_report(photos=photos)
    write_report_pdf(sample_report(), _CountingSink())  # font loading is a one-off cost per process

    sink = _CountingSink()
    tracemalloc.start()
    try:
        write_report_pdf(report, sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.count > total
    assert peak < 4_000_000, (
        f"peak {peak / 1e6:.1f} MB of Python allocations for {total / 1e6:.0f} MB of photos"
    )


_RSS_PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kiosk.report.model import make_photo
    from kiosk.report.pdf import write_report_pdf
    from tests.factories import CREATED_AT, sample_report

    jpeg = Path(sys.argv[1]).read_bytes()
    report = sample_report(photos=[make_photo(i, jpeg, 4056, 3040, CREATED_AT) for i in range(1, 21)])

    class Sink:
        def write(self, chunk):
            return len(chunk)

    def status_kib(field):  # VmHWM, unlike ru_maxrss, does not inherit the forking parent's peak
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
        return int(line.split()[1])

    before = status_kib("VmRSS:")
    write_report_pdf(report, Sink())
    print((status_kib("VmHWM:") - before) * 1024)
    """
)


def test_pdf_peak_rss_growth_is_bounded(tmp_path: Path, big_jpeg: bytes) -> None:
    """The real requirement, in a fresh process: 20 photos of 12 MP seal within 64 MB of extra RSS,
    fonts included."""
    (tmp_path / "photo.jpg").write_bytes(big_jpeg)
    probe = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(tmp_path / "photo.jpg")],
        capture_output=True,
        check=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    growth = int(probe.stdout)
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"


# --- versions -----------------------------------------------------------------------------------------------


def test_a_1_0_document_is_still_read_and_valid() -> None:
    # 1.1 only added the optional patient.confirmed_from: a 1.0 report (valid against the 1.0 schema that
    # stays in the package) still reads back from XML.
    document = json.loads(report_json(sample_report()))
    document["schema_version"] = "1.0"
    document["patient"].pop("confirmed_from", None)
    old_schema = json.loads((document_module_path() / "report-1.0.schema.json").read_text())
    jsonschema.validate(document, old_schema)
    xml = report_xml(sample_report()).decode().replace('schemaVersion="1.1"', 'schemaVersion="1.0"')
    assert xml_to_dict(xml.encode())["patient"] == json.loads(report_json(sample_report()))["patient"]


def test_a_1_1_field_is_refused_by_the_1_0_schema() -> None:
    # Why the version moved: 1.0 consumers validate with additionalProperties false.
    report = sample_report(
        patient=Patient(mrn="M1", birth_date="1980-01-01", confirmed_by="birth_date", confirmed_from="fhir")
    )
    document = json.loads(report_json(report))
    old_schema = json.loads((document_module_path() / "report-1.0.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, old_schema)
    validate(document)


def document_module_path() -> Path:
    return document.SCHEMA_PATH.parent
