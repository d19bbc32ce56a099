"""The report model: one source of truth for report.json, report.xml and report.pdf.

The photo and signature bytes ride along in memory (``exclude=True``) so that the documents describe them
without embedding them; the bundle writer stores them as files next to the documents.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = "1.1"  # 1.1 added patient.confirmed_from (report-1.0.schema.json stays shipped)

# XML 1.0 cannot carry C0 controls (other than tab, newline, carriage return), lone surrogates or the
# noncharacters U+FFFE/U+FFFF. Refusing them at the model keeps JSON, XML and PDF in agreement, and no
# keyboard or scanner a nurse uses produces them.
_FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean_text(value: str) -> str:
    match = _FORBIDDEN_CHARS.search(value)
    if match:
        raise ValueError(
            f"contains a control or invalid character (U+{ord(match.group()):04X})"
            f" at position {match.start()}"
        )
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
RequiredText = Annotated[str, Field(min_length=1), AfterValidator(_clean_text)]


def new_report_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Station(_Model):
    id: RequiredText
    device: Text | None = Field(default=None, description="Camera model or capture device")
    software_version: Text


class Staff(_Model):
    id: RequiredText = Field(description="Badge number or local staff identifier")
    name: Text | None = None
    role: Text | None = None


class Patient(_Model):
    mrn: RequiredText = Field(description="Medical record number or other patient identifier")
    issuer: Text | None = Field(default=None, description="Assigning authority of the identifier")
    name: Text | None = None
    birth_date: date | None = None
    id_source: Literal["barcode", "keyboard-wedge", "manual", "cli"] = "manual"
    barcode_format: Text | None = Field(default=None, description="Symbology when scanned, e.g. DataMatrix")
    confirmed_by: Literal["name", "birth_date"] | None = Field(
        default=None, description="Second identifier the staff member confirmed"
    )
    confirmed_from: Literal["payload", "fhir", "typed"] | None = Field(
        default=None,
        description="Where that identifier came from: the wristband, a FHIR Patient lookup, or typed",
    )


Purpose = Literal["clinical_care", "medical_record", "education", "research", "publication"]
PURPOSES: tuple[Purpose, ...] = ("clinical_care", "medical_record", "education", "research", "publication")


class Consent(_Model):
    consenter: Literal["patient", "guardian", "substitute_decision_maker", "none"]
    consenter_name: Text | None = None
    method: Literal["verbal", "written", "clinical_necessity"]
    witness_staff_id: Text | None = Field(
        default=None, description="Staff member who witnessed verbal consent"
    )
    purposes: dict[Purpose, bool] = Field(description="Each purpose answered yes or no")
    exception_reason: Text | None = Field(default=None, description="Required for clinical_necessity")
    text_version: RequiredText = Field(description="Version of the clinic's consent wording shown")
    recorded_at: datetime
    signature_file: Text | None = Field(default=None, description="Bundle path of the signature PNG")
    signature_png: bytes | None = Field(default=None, exclude=True, repr=False)

    @field_validator("purposes")
    @classmethod
    def _every_purpose_answered(cls, purposes: dict[Purpose, bool]) -> dict[Purpose, bool]:
        missing = [p for p in PURPOSES if p not in purposes]
        if missing:
            raise ValueError(f"every purpose must be answered; missing: {', '.join(missing)}")
        return {p: purposes[p] for p in PURPOSES}

    @model_validator(mode="after")
    def _method_requirements(self) -> Consent:
        if self.method == "written" and not self.signature_png:
            raise ValueError("written consent needs a signature")
        if self.method == "clinical_necessity" and not self.exception_reason:
            raise ValueError("clinical necessity needs a reason")
        if self.consenter in ("guardian", "substitute_decision_maker") and not self.consenter_name:
            raise ValueError(f"{self.consenter.replace('_', ' ')} needs a name")
        if self.signature_png and not self.signature_png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("signature must be a PNG image")
        if self.signature_png and self.signature_file is None:
            self.signature_file = "consent/signature.png"
        return self


class BodySite(_Model):
    code: RequiredText = Field(description="SNOMED CT concept id of the body structure")
    display: RequiredText
    laterality: Literal["left", "right", "bilateral"] | None = None
    laterality_code: Text | None = Field(default=None, description="SNOMED CT laterality qualifier")
    view: Literal["front", "back"] | None = None


class Photo(_Model):
    id: RequiredText = Field(description="Stable id within the report, e.g. photo-01")
    file: RequiredText = Field(description="Bundle path of the JPEG, e.g. photos/photo-01.jpg")
    captured_at: datetime
    body_site: BodySite | None = None
    notes: Text = ""
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    size: int = Field(gt=0, description="Bytes of the JPEG file")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    jpeg: bytes = Field(exclude=True, repr=False)


class Report(_Model):
    schema_version: Literal["1.1"] = SCHEMA_VERSION
    report_id: str = Field(default_factory=new_report_id, pattern="^[0-9a-f-]{36}$")
    created_at: datetime = Field(default_factory=utc_now)
    station: Station
    staff: Staff
    patient: Patient
    consent: Consent
    photos: list[Photo] = Field(min_length=1)
    notes: Text = ""

    def public_dict(self) -> dict:
        """The report as report.json carries it (no image bytes)."""
        return self.model_dump(mode="json")


def make_photo(
    index: int, jpeg: bytes, width: int, height: int, captured_at: datetime, **fields: object
) -> Photo:
    """A Photo record for already-stripped JPEG bytes."""
    photo_id = f"photo-{index:02d}"
    return Photo(
        id=photo_id,
        file=f"photos/{photo_id}.jpg",
        captured_at=captured_at,
        width=width,
        height=height,
        size=len(jpeg),
        sha256=hashlib.sha256(jpeg).hexdigest(),
        jpeg=jpeg,
        **fields,  # type: ignore[arg-type]
    )
