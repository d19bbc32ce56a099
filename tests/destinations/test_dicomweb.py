"""DICOMweb destination: the DICOM objects it builds (checked with dciodvfy) and STOW-RS to a real Orthanc."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image
from pydantic import ValidationError
from pydicom.encaps import generate_fragmented_frames

from kiosk.destinations.base import DeliveryError, Parcel
from kiosk.destinations.dicom_objects import (
    DicomSettings,
    UnsupportedPhoto,
    jpeg_frame,
    person_name,
    report_uid,
    study_instances,
    to_part10,
)
from kiosk.destinations.dicomweb import DicomWebConfig, DicomWebDestination, _check_store_response
from kiosk.destinations.medical_common import Response
from kiosk.destinations.registry import build
from kiosk.report.model import BodySite, Report, make_photo
from tests.destinations.conftest import free_port, sealed_parcel, secret_file
from tests.factories import CREATED_AT, make_jpeg, sample_report

PASSPHRASE = "Zk3q-9vLr_xW2pT7mN4bY8cH1jF6sD0gA5eU"
USER, PASSWORD = "kiosk", "orthanc-test-pw"
SETTINGS = DicomSettings("Example General Hospital", "Default Issuer")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


@dataclass
class Orthanc:
    url: str

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        reply = requests.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=10, **kwargs)
        reply.raise_for_status()
        return reply


def _dicomweb_plugin() -> Path:
    listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True).stdout.split()
    candidates = [Path(p) for p in listed if p.endswith(".so")]
    candidates += [p for d in PLUGIN_DIRS for p in sorted(Path(d).glob("libOrthancDicomWeb.so*"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RuntimeError("the Orthanc DICOMweb plugin is not installed (scripts/setup-system.sh installs it)")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).is_file():
        raise RuntimeError("Orthanc is not installed (scripts/setup-system.sh installs it)")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "kiosk-test",
        "HttpPort": port,
        "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port at all
        "DicomPort": free_port(),
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(_dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False,
        "HttpThreadsCount": 4,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=root
    )
    server = Orthanc(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{server.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start:\n{(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _seal(folder: Path, report: Report) -> Parcel:
    return sealed_parcel(folder, report=report, passphrase_file=folder / "pacs.key").parcel


@pytest.fixture(scope="module")
def report() -> Report:
    return sample_report(photo_count=2)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secrets")
    for name, value in (("pacs.key", PASSPHRASE), ("password", PASSWORD), ("wrong", "not-the-password")):
        secret_file(folder / name, value)
    return folder


@pytest.fixture(scope="module")
def parcel(report: Report, secrets_dir: Path) -> Parcel:
    return _seal(secrets_dir, report)


def _destination(base_url: str, secrets_dir: Path, password_file: str = "password") -> DicomWebDestination:
    config = DicomWebConfig.model_validate(
        {
            "name": "pacs",
            "type": "dicomweb",
            "base_url": base_url,
            "encryption": "passphrase",
            "passphrase_file": secrets_dir / "pacs.key",
            "auth": {"type": "basic", "username": USER, "password_file": secrets_dir / password_file},
            "institution_name": "Example General Hospital",
            "timeout": 20,
        }
    )
    destination = build(config)
    assert isinstance(destination, DicomWebDestination)
    return destination


@pytest.fixture(scope="module")
def delivered(orthanc: Orthanc, parcel: Parcel, secrets_dir: Path) -> str:
    return _destination(orthanc.dicomweb, secrets_dir).deliver(parcel)


def _multipart(reply: requests.Response) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', reply.headers["Content-Type"]).group(1).encode()
    bodies = []
    for part in reply.content.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        bodies.append(part.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n"))
    return bodies


def _jpeg(width: int, height: int, **save: Any) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(make_jpeg(width, height))).save(out, "JPEG", **save)
    return out.getvalue()


def _report_with(jpeg: bytes, **site: Any) -> Report:
    width, height = Image.open(io.BytesIO(jpeg)).size
    body_site = BodySite(code="30021000", display="Lower leg structure", **site) if site else None
    return sample_report(photos=[make_photo(1, jpeg, width, height, CREATED_AT, body_site=body_site)])


# -- the objects ------------------------------------------------------------------------------------


def test_every_object_passes_dciodvfy(tmp_path: Path) -> None:
    variants = {
        "ycbcr-420": sample_report(photo_count=1),
        "ycbcr-444": _report_with(_jpeg(320, 240, subsampling=0), laterality="right", view="back"),
        "grey": _report_with(make_jpeg(320, 240, mode="L")),
        "no-site-written-by-name": sample_report(
            photo_count=1, patient={"mrn": "A1", "name": "Rivera, Jamie", "id_source": "manual"}
        ),
    }
    warnings = set()
    for name, report in variants.items():
        for index, ds in enumerate(study_instances(report, b"%PDF-1.4\n%%EOF\n", SETTINGS)):
            path = tmp_path / f"{name}-{index}.dcm"
            path.write_bytes(to_part10(ds))
            result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
            lines = (result.stdout + result.stderr).splitlines()
            errors = [line for line in lines if line.startswith("Error")]
            assert not errors, f"{name} instance {index}: {errors}"
            warnings |= {line for line in lines if line.startswith("Warning")}
    assert warnings <= {
        # Staff badge ids are coded in a private scheme ("99…", per PS3.16): dciodvfy cannot know it.
        "Warning - Unrecognized defined term <99CPK> for value 1 of attribute <Coding Scheme Designator>",
        # A photo without a side (grey variant: no body site) has an empty series Laterality, meaning unknown.
        "Warning - is only permitted to be empty when actually unknown; should be absent (not empty) if an"
        " unpaired body part, and have a value if a paired body part - attribute <Laterality>",
    }


def test_pixel_description_follows_the_jpeg() -> None:
    cases = {
        "YBR_FULL_422": make_jpeg(64, 48),  # Pillow's default 4:2:0, as the camera makes
        "MONOCHROME2": make_jpeg(64, 48, mode="L"),
    }
    cases_444 = [("YBR_FULL_422", _jpeg(64, 48, subsampling=0))]  # the VL IOD has no YBR_FULL
    for photometric, jpeg in [*cases.items(), *cases_444]:
        (ds, _pdf) = study_instances(_report_with(jpeg), b"%PDF", SETTINGS)
        assert ds.PhotometricInterpretation == photometric
        assert ds.SamplesPerPixel == (1 if photometric == "MONOCHROME2" else 3)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    frame = jpeg_frame(make_jpeg(64, 48))
    assert (frame.rows, frame.columns, frame.sampling) == (48, 64, ((2, 2), (1, 1), (1, 1)))
    with pytest.raises(UnsupportedPhoto, match="baseline"):
        study_instances(_report_with(_jpeg(64, 48, progressive=True)), b"%PDF", SETTINGS)


def test_uids_are_derived_from_the_report_id(report: Report) -> None:
    first = study_instances(report, b"%PDF", SETTINGS)
    again = study_instances(report, b"%PDF", SETTINGS)
    other = study_instances(sample_report(photo_count=2), b"%PDF", SETTINGS)
    uids = [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in first]
    assert uids == [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in again]
    assert not {u for triple in uids for u in triple} & {
        u for ds in other for u in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    }
    assert len({ds.SeriesInstanceUID for ds in first}) == 2  # photos and the PDF: one series each
    for uid in {u for triple in uids for u in triple}:
        assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid) and len(uid) <= 64
    assert first[0].StudyInstanceUID == report_uid(report.report_id, "study")


def test_person_names() -> None:
    assert person_name("Jamie Rivera") == "Jamie Rivera^"  # unknown split: all in the family name
    assert person_name("Rivera, Jamie") == "Rivera^Jamie"
    assert person_name("O'Brien^Evil=Name\\x") == "O'Brien Evil Name x^"
    assert person_name(None) == ""


# -- delivery to Orthanc ----------------------------------------------------------------------------


def test_stow_stores_the_study_qido_finds_it_wado_returns_it(
    orthanc: Orthanc, delivered: str, report: Report, parcel: Parcel, secrets_dir: Path
) -> None:
    study_uid = report_uid(report.report_id, "study")
    assert f"study {study_uid}: 3 instances stored" in delivered
    studies = orthanc.get("/dicom-web/studies", params={"PatientID": "MRN0012345"}).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
    instances = orthanc.get(f"/dicom-web/studies/{study_uid}/instances").json()
    assert len(instances) == 3
    pdf_bytes = _destination(orthanc.dicomweb, secrets_dir).open_bundle(parcel)["report.pdf"]
    retrieved = {}
    for instance in instances:
        series_uid, sop_uid = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]
        reply = orthanc.get(
            f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        (part,) = _multipart(reply)
        retrieved[sop_uid] = pydicom.dcmread(io.BytesIO(part))

    for index, photo in enumerate(report.photos, start=1):
        ds = retrieved[report_uid(report.report_id, "instance", photo.id)]
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        (frame,) = generate_fragmented_frames(ds.PixelData, number_of_frames=1)
        fragment = b"".join(frame)
        # The JPEG bytes exactly as sealed; DICOM pads an odd-length fragment with one zero byte.
        assert fragment == photo.jpeg + b"\0" * (len(photo.jpeg) % 2)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4" and ds.Modality == "XC"
        assert ds.InstanceNumber == index
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (480, 640, 3)
        assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.PlanarConfiguration == 0
        assert ds.BitsAllocated == 8 and ds.LossyImageCompression == "01"
        assert ds.PatientID == "MRN0012345" and ds.IssuerOfPatientID == "Example General Hospital"
        assert ds.TypeOfPatientID == "BARCODE"
        assert str(ds.PatientName) == "Jamie Rivera^" and ds.PatientBirthDate == "19500102"
        (region,) = ds.AnatomicRegionSequence
        assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == (
            "30021000",
            "SCT",
            "Lower leg structure",
        )
        assert [m.CodeValue for m in region.AnatomicRegionModifierSequence] == ["7771000", "255549009"]
        assert ds.ImageLaterality == "L"
        assert str(ds.OperatorsName) == "Alex Morgan^"
        (operator,) = ds.OperatorIdentificationSequence
        assert operator.PersonIdentificationCodeSequence[0].CodeValue == "RN-1234"
        assert ds.Manufacturer == "Clinical Photo Kiosk"
        assert ds.ManufacturerModelName == "Raspberry Pi Camera Module 3"
        assert ds.DeviceSerialNumber == "station-01" and ds.StationName == "station-01"
        assert ds.InstitutionName == "Example General Hospital"
        assert ds.AcquisitionDateTime == "20240506070809+0000"
        assert (ds.ContentDate, ds.ContentTime) == ("20240506", "070809")
        assert (ds.StudyDate, ds.SeriesDate, ds.TimezoneOffsetFromUTC) == ("20240506", "20240506", "+0000")
        assert ds.StudyDescription == "Wound photography" and ds.AccessionNumber == ""
        assert ds.ImageComments == photo.notes

    pdf = retrieved[report_uid(report.report_id, "instance", "report.pdf")]
    assert pdf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and pdf.Modality == "DOC"
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength] == pdf_bytes
    assert pdf.BurnedInAnnotation == "YES" and pdf.DocumentTitle == "Wound photography report"
    assert pdf.StudyInstanceUID == study_uid and pdf.PatientID == "MRN0012345"
    assert {s.ReferencedSOPInstanceUID for s in pdf.SourceInstanceSequence} == {
        report_uid(report.report_id, "instance", p.id) for p in report.photos
    }


def test_resending_keeps_one_copy(
    orthanc: Orthanc, delivered: str, report: Report, parcel: Parcel, secrets_dir: Path
) -> None:
    before = orthanc.get("/statistics").json()["CountInstances"]
    receipt = _destination(orthanc.dicomweb, secrets_dir).deliver(parcel)
    assert "3 instances stored" in receipt
    assert orthanc.get("/statistics").json()["CountInstances"] == before
    study_uid = report_uid(report.report_id, "study")
    assert len(orthanc.get(f"/dicom-web/studies/{study_uid}/instances").json()) == 3


def test_wrong_password_is_permanent(orthanc: Orthanc, parcel: Parcel, secrets_dir: Path) -> None:
    with pytest.raises(DeliveryError, match="authentication refused") as caught:
        _destination(orthanc.dicomweb, secrets_dir, password_file="wrong").deliver(parcel)
    assert caught.value.permanent


def test_server_down_is_transient(parcel: Parcel, secrets_dir: Path) -> None:
    with pytest.raises(DeliveryError, match="cannot reach DICOMweb server") as caught:
        _destination(f"http://127.0.0.1:{free_port()}/dicom-web", secrets_dir).deliver(parcel)
    assert not caught.value.permanent


def test_wrong_path_is_permanent(orthanc: Orthanc, parcel: Parcel, secrets_dir: Path) -> None:
    with pytest.raises(DeliveryError, match=r"HTTP 404") as caught:
        _destination(f"{orthanc.url}/not-dicom-web", secrets_dir).deliver(parcel)
    assert caught.value.permanent


def test_no_patient_data_in_logs_or_errors(
    orthanc: Orthanc, parcel: Parcel, secrets_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [_destination(orthanc.dicomweb, secrets_dir).deliver(parcel)]
    for url, password in ((orthanc.dicomweb, "wrong"), (f"http://127.0.0.1:{free_port()}", "password")):
        with pytest.raises(DeliveryError) as caught:
            _destination(url, secrets_dir, password).deliver(parcel)
        messages.append(str(caught.value))
    text = "\n".join(messages + [r.getMessage() for r in caplog.records if r.name.startswith("kiosk")])
    for secret in ("MRN0012345", "Jamie", "Rivera", "1950"):
        assert secret not in text


def test_config_is_checked(secrets_dir: Path) -> None:
    base = {"name": "pacs", "type": "dicomweb", "institution_name": "Example General Hospital"}
    DicomWebConfig.model_validate({**base, "base_url": "https://pacs.example.org/dicom-web/"})
    with pytest.raises(ValidationError, match="https"):
        DicomWebConfig.model_validate({**base, "base_url": "http://pacs.example.org/dicom-web"})
    with pytest.raises(ValidationError, match="institution_name"):
        DicomWebConfig.model_validate(
            {"name": "pacs", "type": "dicomweb", "base_url": "https://pacs.example.org"}
        )


def test_store_response_failures_are_classified() -> None:
    def response(status: int, referenced: int, reasons: list[int]) -> Response:
        answer: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [{} for _ in range(referenced)]}}
        if reasons:
            answer["00081198"] = {
                "vr": "SQ",
                "Value": [{"00081197": {"vr": "US", "Value": [r]}} for r in reasons],
            }
        return Response(status, "application/dicom+json", json.dumps(answer).encode())

    assert _check_store_response(response(200, 3, []), expected=3) == 3
    with pytest.raises(DeliveryError, match=r"did not store 1 of 3 instances .*0xA900") as caught:
        _check_store_response(response(202, 2, [0xA900]), expected=3)
    assert caught.value.permanent, "a data set that does not match its SOP class will never be accepted"
    with pytest.raises(DeliveryError, match="0xA700") as caught:
        _check_store_response(response(409, 0, [0xA700, 0xA700, 0xA700]), expected=3)
    assert not caught.value.permanent, "out of resources may pass"
    with pytest.raises(DeliveryError, match="did not store 1 of 3") as caught:
        _check_store_response(response(200, 2, []), expected=3)
    assert not caught.value.permanent
    with pytest.raises(DeliveryError, match="HTTP 503") as caught:
        _check_store_response(Response(503, "text/plain", b"busy"), expected=3)
    assert not caught.value.permanent
