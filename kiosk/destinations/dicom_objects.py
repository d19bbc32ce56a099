"""DICOM objects for one report: a VL Photographic Image per photo and an Encapsulated PDF, in one study.

No I/O here (STOW-RS is in dicomweb.py). The photos go in exactly as the kiosk sealed them: the JPEG
bitstream becomes the single fragment of encapsulated Pixel Data under the JPEG Baseline transfer syntax,
never decoded or re-encoded, so the PACS shows the very pixels in the report's PDF and SHA-256 list.

UIDs are derived from the report id (``2.25.<uuid5>``), so a resend produces the same Study, Series and
SOP Instance UIDs and the archive keeps one copy. All times are UTC, with Timezone Offset From UTC +0000,
because the report carries UTC and a PACS must not guess the station's zone.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit

from kiosk.report.model import Photo, Report

VL_PHOTOGRAPHIC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
LOCAL_SCHEME = "99CPK"  # DICOM reserves "99…" for private coding schemes: staff badge ids live here
MANUFACTURER = "Clinical Photo Kiosk"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:clinical-photo-kiosk:dicom")
_LATERALITY = {  # report laterality -> Image Laterality, and the SNOMED CT modifier (CID 244)
    "left": ("L", "7771000", "Left"),
    "right": ("R", "24028007", "Right"),
    "bilateral": ("B", "51440002", "Right and left"),
}
_VIEW = {"front": ("255549009", "Anterior"), "back": ("255551008", "Posterior")}
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class UnsupportedPhoto(ValueError):
    """A JPEG that no DICOM transfer syntax for VL images can carry unchanged."""


@dataclass(frozen=True)
class DicomSettings:
    institution_name: str
    issuer_of_patient_id: str | None = None


@dataclass(frozen=True)
class JpegFrame:
    marker: int  # SOF0 baseline, SOF1 extended, ...
    precision: int
    rows: int
    columns: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) per component
    adobe_transform: int | None  # APP14 colour transform: 0 means RGB was coded as is


def report_uid(report_id: str, *parts: str) -> UID:
    """``2.25.<decimal of a UUID v5>``: stable for a report, unique across reports (≤ 44 characters)."""
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, '/'.join((report_id, *parts))).int}")


def jpeg_frame(jpeg: bytes) -> JpegFrame:
    """The frame header of a JPEG: walks marker segments up to the first scan, decodes nothing."""
    if not jpeg.startswith(b"\xff\xd8"):
        raise UnsupportedPhoto("not a JPEG")
    pos, adobe = 2, None
    while pos + 4 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            break
        marker = jpeg[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        segment = jpeg[pos + 4 : pos + 2 + length]
        if marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        elif marker in _SOF and len(segment) >= 6:
            count = segment[5]
            factors = tuple((segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 0x0F) for i in range(count))
            rows, columns = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            return JpegFrame(marker, segment[0], rows, columns, factors, adobe)
        elif marker == 0xDA:
            break
        pos += 2 + length
    raise UnsupportedPhoto("JPEG without a frame header")


def _pixel_description(frame: JpegFrame) -> tuple[UID, int, str]:
    """Transfer syntax, Samples per Pixel and Photometric Interpretation for a JPEG kept as it is."""
    if frame.marker == 0xC0 and frame.precision == 8:
        syntax = JPEGBaseline8Bit
    elif frame.marker == 0xC1 and frame.precision == 8:
        syntax = JPEGExtended12Bit  # extended sequential Huffman, 8-bit: Process 2 (…4.51)
    else:
        raise UnsupportedPhoto("only baseline or extended sequential 8-bit JPEGs can be stored unchanged")
    if len(frame.sampling) == 1:
        return syntax, 1, "MONOCHROME2"
    if len(frame.sampling) != 3:
        raise UnsupportedPhoto("CMYK JPEGs cannot be stored as DICOM VL images")
    if frame.adobe_transform == 0:
        return syntax, 3, "RGB"  # components coded without the YCbCr transform
    # PS3.5 8.2.1: a YCbCr JPEG with subsampled chroma (4:2:2 and the camera's 4:2:0 alike) is
    # YBR_FULL_422. A 4:4:4 one would be YBR_FULL, but the VL Image module enumerates no YBR_FULL, so it is
    # labelled YBR_FULL_422 too (as DCMTK's img2dcm does): decoders take the sampling from the JPEG frame
    # header, and the alternative would be re-encoding, which this kiosk never does.
    return syntax, 3, "YBR_FULL_422"


def _da(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H%M%S")


def _dt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _lo(text: str, limit: int = 64) -> str:
    # LO/SH/PN values may not contain backslash (the value separator) and have a length limit.
    return text.replace("\\", "/").strip()[:limit]


def person_name(name: str | None) -> str:
    """DICOM PN: "Family, Given" splits at the comma; any other form goes whole into the family name,
    because guessing which word of "Jamie Rivera" is the family name is wrong for many cultures. The
    explicit "^" marks it as the family component (without it, a space-separated name reads as the
    retired ACR-NEMA form that some viewers split on their own)."""
    if not name:
        return ""
    clean = "".join(" " if ch in "^=\\" else ch for ch in name).strip()
    family, comma, given = clean.partition(",")
    if comma and family.strip() and given.strip() and "," not in given:
        return f"{family.strip()[:64]}^{given.strip()[:64]}"
    return f"{clean[:64]}^"


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    if len(value) <= 16:
        item.CodeValue = value
    else:  # SNOMED CT ids reach 18 digits; Code Value (SH) holds 16
        item.LongCodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = _lo(meaning)
    return item


def _common(report: Report, settings: DicomSettings, *, sop_class: UID, sop_uid: UID, series: str) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common attributes."""
    patient, station = report.patient, report.station
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names from any script
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = _da(report.created_at)
    ds.InstanceCreationTime = _tm(report.created_at)
    ds.TimezoneOffsetFromUTC = "+0000"
    # Patient
    ds.PatientName = person_name(patient.name)
    ds.PatientID = _lo(patient.mrn)
    issuer = patient.issuer or settings.issuer_of_patient_id
    if issuer:
        ds.IssuerOfPatientID = _lo(issuer)
    # Scanned from a wristband (a barcode reader or keyboard-wedge scanner) or typed in.
    ds.TypeOfPatientID = "BARCODE" if patient.id_source in ("barcode", "keyboard-wedge") else "TEXT"
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = report_uid(report.report_id, "study")
    ds.StudyDate = _da(report.created_at)
    ds.StudyTime = _tm(report.created_at)
    ds.ReferringPhysicianName = ""
    ds.StudyID = report.report_id.replace("-", "")[:16]
    ds.AccessionNumber = ""  # no order: the kiosk photographs at the bedside, not against a worklist
    ds.StudyDescription = "Wound photography"
    # General Series
    ds.SeriesInstanceUID = report_uid(report.report_id, "series", series)
    ds.SeriesDate = _da(report.created_at)
    ds.SeriesTime = _tm(report.created_at)
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.StationName = _lo(station.id, 16)
    if station.device:
        ds.ManufacturerModelName = _lo(station.device)
    ds.DeviceSerialNumber = _lo(station.id)
    ds.SoftwareVersions = _lo(station.software_version)
    return ds


def photo_dataset(report: Report, photo: Photo, index: int, settings: DicomSettings) -> Dataset:
    """A VL Photographic Image (modality XC) holding the photo's JPEG bytes unchanged."""
    frame = jpeg_frame(photo.jpeg)
    syntax, samples, photometric = _pixel_description(frame)
    ds = _common(
        report,
        settings,
        sop_class=VL_PHOTOGRAPHIC_IMAGE,
        sop_uid=report_uid(report.report_id, "instance", photo.id),
        series="photos",
    )
    ds.Modality = "XC"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Wound photographs"
    # Operator and institution belong to the General Series and General Equipment modules, which the
    # Encapsulated PDF IOD does not include, so only the images carry them.
    staff = report.staff
    if staff.name:
        ds.OperatorsName = person_name(staff.name)
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = [code_item(staff.id, LOCAL_SCHEME, staff.name or staff.id)]
    operator.InstitutionName = _lo(settings.institution_name)
    ds.OperatorIdentificationSequence = [operator]
    ds.InstitutionName = _lo(settings.institution_name)
    # General Image / VL Image
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = index
    ds.PatientOrientation = ""
    ds.ContentDate = _da(photo.captured_at)
    ds.ContentTime = _tm(photo.captured_at)
    ds.AcquisitionDateTime = _dt(photo.captured_at)
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "YES"  # a wound photo may show a face or tattoo: never assume not
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{frame.rows * frame.columns * samples / len(photo.jpeg):.2f}"
    if photo.notes:
        ds.ImageComments = photo.notes
    ds.AcquisitionContextSequence = []  # type 2: nothing coded to say beyond the anatomy below
    site = photo.body_site
    if site:
        region = code_item(site.code, "SCT", site.display)
        modifiers = []
        if site.laterality:
            letter, code, meaning = _LATERALITY[site.laterality]
            modifiers.append(code_item(site.laterality_code or code, "SCT", meaning))
            ds.ImageLaterality = letter
        if site.view:
            view_code, view_meaning = _VIEW[site.view]
            modifiers.append(code_item(view_code, "SCT", view_meaning))
        if modifiers:
            region.AnatomicRegionModifierSequence = modifiers
        ds.AnatomicRegionSequence = [region]
    if "ImageLaterality" not in ds:
        # General Series Laterality (2C) is needed when Image Laterality is absent: empty means unknown, the
        # truth when the nurse picked no side (a midline site, or no site at all).
        ds.Laterality = ""
    # Image Pixel: what the JPEG frame header says, so decoders and the header agree.
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = frame.rows
    ds.Columns = frame.columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([photo.jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = _file_meta(ds, syntax)
    return ds


def pdf_dataset(report: Report, pdf: bytes, settings: DicomSettings) -> Dataset:
    """An Encapsulated PDF (modality DOC) of the report, in the same study, its own series."""
    ds = _common(
        report,
        settings,
        sop_class=ENCAPSULATED_PDF,
        sop_uid=report_uid(report.report_id, "instance", "report.pdf"),
        series="report",
    )
    ds.Modality = "DOC"
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Wound photography report"
    ds.ConversionType = "WSD"  # SC Equipment: made by software on a workstation
    ds.InstanceNumber = 1
    ds.ContentDate = _da(report.created_at)
    ds.ContentTime = _tm(report.created_at)
    ds.AcquisitionDateTime = _dt(report.created_at)
    ds.BurnedInAnnotation = "YES"  # the PDF prints the patient's identifiers
    ds.RecognizableVisualFeatures = "YES"
    ds.DocumentTitle = "Wound photography report"
    ds.ConceptNameCodeSequence = []  # type 2: no standard document code fits a photo report well
    sources = []
    for photo in report.photos:  # the PDF shows every photo: say which instances it renders
        source = Dataset()
        source.ReferencedSOPClassUID = VL_PHOTOGRAPHIC_IMAGE
        source.ReferencedSOPInstanceUID = report_uid(report.report_id, "instance", photo.id)
        sources.append(source)
    ds.SourceInstanceSequence = sources
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)  # OB values have even length
    ds.EncapsulatedDocumentLength = len(pdf)  # so readers can drop the pad byte
    ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
    return ds


def _file_meta(ds: Dataset, syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    return meta


def to_part10(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file in memory (what STOW-RS carries)."""
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def study_instances(report: Report, pdf: bytes, settings: DicomSettings) -> list[Dataset]:
    photos = [photo_dataset(report, photo, i, settings) for i, photo in enumerate(report.photos, start=1)]
    return [*photos, pdf_dataset(report, pdf, settings)]
