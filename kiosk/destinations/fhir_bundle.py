"""Builds the FHIR R4 transaction Bundle for one report; no I/O here (transport is in fhir.py).

One transaction carries the whole report, so the server stores all of it or none of it:

- the Patient is never created by default: every resource points at it with a conditional reference
  ``Patient?identifier=<system>|<mrn>`` that the server resolves to the patient it already knows;
- each photo is a Binary (the JPEG bytes, unchanged) plus a DocumentReference or Media that describes it;
- the report PDF is a Binary plus a DocumentReference;
- the consent is a Consent resource, with the signature PNG as its source attachment.

Every identifier is derived from the report id, so resending the same report creates nothing new: the
describing resources are conditional creates (``ifNoneExist`` on identifier
``urn:clinical-photo-kiosk:report|<report-id>/<part>``), and Binaries, which cannot be searched by
identifier, are PUT to ids derived from the report id (an update with identical content).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from kiosk.report.model import Photo, Report

REPORT_SYSTEM = "urn:clinical-photo-kiosk:report"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
LOCAL_CODES = "urn:clinical-photo-kiosk:CodeSystem"  # for purposes and policies HL7 has no code for
BODY_SITE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/bodySite"  # R4 core, valueReference
CONSENT_EXTENSION = "urn:clinical-photo-kiosk:StructureDefinition/consent-record"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:clinical-photo-kiosk:fhir")

# Consent purposes -> PurposeOfUse codes of v3-ActReason where HL7 has one; "publication" has none.
PURPOSE_CODES: dict[str, tuple[str, str, str]] = {
    "clinical_care": (ACT_REASON, "TREAT", "treatment"),
    "medical_record": (ACT_REASON, "RECORDMGT", "records management"),
    "education": (ACT_REASON, "TRAIN", "training"),
    "research": (ACT_REASON, "HRESCH", "healthcare research"),
    "publication": (f"{LOCAL_CODES}/consent-purpose", "publication", "publication"),
}
LATERALITY = {  # SNOMED CT qualifier values, used when the report carries no laterality_code
    "left": ("7771000", "Left"),
    "right": ("24028007", "Right"),
    "bilateral": ("51440002", "Right and left"),
}
VIEW = {"front": ("255549009", "Anterior"), "back": ("255551008", "Posterior")}


@dataclass(frozen=True)
class BundleSettings:
    base_url: str
    patient_system: str
    photo_resource: Literal["DocumentReference", "Media"] = "DocumentReference"
    create_patient: bool = False
    staff_system: str = "urn:clinical-photo-kiosk:staff"
    station_system: str = "urn:clinical-photo-kiosk:station"


def stable_uuid(report_id: str, *parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join((report_id, *parts))))


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def token_query(system: str, value: str) -> str:
    """``identifier=system|value``, percent-encoded so any MRN survives the query string."""
    return urlencode({"identifier": f"{system}|{value}"})


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _report_identifier(report_id: str, part: str | None = None) -> dict[str, str]:
    return {"system": REPORT_SYSTEM, "value": f"{report_id}/{part}" if part else report_id}


def _conditional_create(resource_type: str, identifier: dict[str, str]) -> dict[str, str]:
    return {
        "method": "POST",
        "url": resource_type,
        "ifNoneExist": token_query(identifier["system"], identifier["value"]),
    }


class _Builder:
    def __init__(self, report: Report, pdf: bytes, settings: BundleSettings) -> None:
        self.report = report
        self.pdf = pdf
        self.settings = settings
        self.rid = report.report_id
        self.entries: list[dict[str, Any]] = []

    # -- references ---------------------------------------------------------------------------------
    def patient_ref(self) -> dict[str, str]:
        if self.settings.create_patient:
            return {"reference": f"urn:uuid:{stable_uuid(self.rid, 'patient')}"}
        return {"reference": "Patient?" + token_query(self.settings.patient_system, self.report.patient.mrn)}

    def staff_ref(self) -> dict[str, Any]:
        # A logical reference (identifier, no resource): the kiosk knows badge ids, not Practitioner ids.
        staff = self.report.staff
        return {
            "type": "Practitioner",
            "identifier": {"system": self.settings.staff_system, "value": staff.id},
            "display": staff.name or staff.id,
        }

    def device_ref(self) -> dict[str, Any]:
        station = self.report.station
        label = f"{station.id} ({station.device})" if station.device else station.id
        return {
            "type": "Device",
            "identifier": {"system": self.settings.station_system, "value": station.id},
            "display": label,
        }

    # -- entries ------------------------------------------------------------------------------------
    def add(self, full_url: str, resource: dict[str, Any], request: dict[str, str]) -> None:
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})

    def binary(self, part: str, content_type: str, data: bytes, owner_url: str) -> str:
        """PUT a Binary to an id derived from the report; returns its relative URL."""
        binary_id = f"cpk-{stable_uuid(self.rid, part, 'binary')}"  # letters first: never a numeric id
        resource = {
            "resourceType": "Binary",
            "id": binary_id,
            "contentType": content_type,
            "securityContext": {"reference": owner_url},  # who may read it follows the document
            "data": base64.b64encode(data).decode("ascii"),
        }
        url = f"Binary/{binary_id}"
        self.add(f"{self.settings.base_url}/{url}", resource, {"method": "PUT", "url": url})
        return url

    def patient(self) -> None:
        patient = self.report.patient
        identifier = {"system": self.settings.patient_system, "value": patient.mrn}
        resource: dict[str, Any] = {"resourceType": "Patient", "identifier": [identifier]}
        if patient.name:
            resource["name"] = [{"text": patient.name}]
        if patient.birth_date:
            resource["birthDate"] = patient.birth_date.isoformat()
        self.add(self.patient_ref()["reference"], resource, _conditional_create("Patient", identifier))

    def body_structure(self, photo: Photo) -> dict[str, Any] | None:
        """A contained R4 BodyStructure: SNOMED CT site plus laterality and view qualifiers."""
        site = photo.body_site
        if site is None:
            return None
        qualifiers = []
        if site.laterality:
            code, display = LATERALITY[site.laterality]
            qualifiers.append({"coding": [coding(SNOMED, site.laterality_code or code, display)]})
        if site.view:
            qualifiers.append({"coding": [coding(SNOMED, *VIEW[site.view])]})
        resource: dict[str, Any] = {
            "resourceType": "BodyStructure",
            "id": "body-site",
            "location": {"coding": [coding(SNOMED, site.code, site.display)], "text": site_text(photo)},
            "patient": self.patient_ref(),
        }
        if qualifiers:
            resource["locationQualifier"] = qualifiers
        return resource

    def photo(self, photo: Photo) -> None:
        full_url = f"urn:uuid:{stable_uuid(self.rid, photo.id)}"
        binary_url = self.binary(photo.id, "image/jpeg", photo.jpeg, full_url)
        attachment = {
            "contentType": "image/jpeg",
            "url": binary_url,
            "size": photo.size,
            "hash": base64.b64encode(hashlib.sha1(photo.jpeg).digest()).decode(),  # noqa: S324 (R4 fixes SHA-1)
            "title": f"{photo.id}: {site_text(photo)}" if photo.body_site else photo.id,
            "creation": instant(photo.captured_at),
        }
        identifier = _report_identifier(self.rid, photo.id)
        resource: dict[str, Any] = {"resourceType": self.settings.photo_resource}
        body = self.body_structure(photo)
        if body:
            # R4 DocumentReference has no body site element; the core bodySite extension points at a
            # contained BodyStructure, which (unlike a bare code) also carries the laterality. Media gets the
            # same extension next to its own bodySite code, so readers find laterality in one place.
            resource["contained"] = [body]
            resource["extension"] = [
                {"url": BODY_SITE_EXTENSION, "valueReference": {"reference": "#body-site"}}
            ]
        resource["identifier"] = [identifier]
        if self.settings.photo_resource == "Media":
            resource.update(self._media(photo, attachment))
        else:
            resource.update(self._document(photo, attachment))
        self.add(full_url, resource, _conditional_create(self.settings.photo_resource, identifier))

    def _document(self, photo: Photo, attachment: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [coding(LOINC, "72170-4", "Photographic image")]},
            "subject": self.patient_ref(),
            "date": instant(self.report.created_at),
            "author": [self.staff_ref(), self.device_ref()],
            "content": [{"attachment": attachment}],
            "context": {"period": {"start": instant(photo.captured_at), "end": instant(photo.captured_at)}},
        }
        if photo.notes:
            fields["description"] = photo.notes
        return fields

    def _media(self, photo: Photo, attachment: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "status": "completed",
            "type": {
                "coding": [coding("http://terminology.hl7.org/CodeSystem/media-type", "image", "Image")]
            },
            "modality": {
                "coding": [
                    coding(
                        "http://dicom.nema.org/resources/ontology/DCM", "XC", "External-camera Photography"
                    )
                ]
            },
            "subject": self.patient_ref(),
            "createdDateTime": instant(photo.captured_at),
            "issued": instant(self.report.created_at),
            "operator": self.staff_ref(),
            "device": self.device_ref(),
            "height": photo.height,
            "width": photo.width,
            "content": attachment,
        }
        site = photo.body_site
        if site:
            fields["bodySite"] = {
                "coding": [coding(SNOMED, site.code, site.display)],
                "text": site_text(photo),
            }
            if site.view:
                fields["view"] = {"coding": [coding(SNOMED, *VIEW[site.view])]}
        if self.report.station.device:
            fields["deviceName"] = self.report.station.device
        if photo.notes:
            fields["note"] = [{"text": photo.notes}]
        return fields

    def report_pdf(self) -> None:
        full_url = f"urn:uuid:{stable_uuid(self.rid, 'report.pdf')}"
        binary_url = self.binary("report.pdf", "application/pdf", self.pdf, full_url)
        identifier = _report_identifier(self.rid)
        resource = {
            "resourceType": "DocumentReference",
            "identifier": [identifier],
            "status": "current",
            "docStatus": "final",
            "type": {"text": "Wound photography report"},
            "subject": self.patient_ref(),
            "date": instant(self.report.created_at),
            "author": [self.staff_ref(), self.device_ref()],
            "description": f"Wound photography report, {len(self.report.photos)} photo(s)",
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "url": binary_url,
                        "size": len(self.pdf),
                        "hash": base64.b64encode(hashlib.sha1(self.pdf).digest()).decode(),  # noqa: S324
                        "title": "report.pdf",
                        "creation": instant(self.report.created_at),
                    }
                }
            ],
        }
        self.add(full_url, resource, _conditional_create("DocumentReference", identifier))

    def consent(self) -> None:
        consent = self.report.consent
        granted = [p for p, yes in consent.purposes.items() if yes]
        refused = [p for p, yes in consent.purposes.items() if not yes]
        purposes = {p: coding(*PURPOSE_CODES[p]) for p in consent.purposes}
        if consent.method == "clinical_necessity":
            # Nobody consented: photos were taken under a clinical-necessity exception. The record says so
            # with a local policy code rather than pretending to an opt-in.
            rule = coding(
                f"{LOCAL_CODES}/consent-policy", "clinical-necessity", "clinical necessity exception"
            )
        else:
            rule = coding(ACT_CODE, "OPTIN" if granted else "OPTOUT")
        provision: dict[str, Any] = {"type": "permit" if granted else "deny"}
        if granted:
            provision["purpose"] = [purposes[p] for p in granted]
            if refused:
                provision["provision"] = [{"type": "deny", "purpose": [purposes[p] for p in refused]}]
        else:
            provision["purpose"] = [purposes[p] for p in refused]
        record: list[dict[str, Any]] = [
            {"url": "method", "valueCode": consent.method},
            {"url": "textVersion", "valueString": consent.text_version},
        ]
        if consent.witness_staff_id:
            witness = {
                "identifier": {"system": self.settings.staff_system, "value": consent.witness_staff_id}
            }
            record.append({"url": "witness", "valueReference": {"type": "Practitioner", **witness}})
        if consent.exception_reason:
            record.append({"url": "exceptionReason", "valueString": consent.exception_reason})
        identifier = _report_identifier(self.rid, "consent")
        resource: dict[str, Any] = {
            "resourceType": "Consent",
            "extension": [{"url": CONSENT_EXTENSION, "extension": record}],
            "identifier": [identifier],
            "status": "active" if granted or consent.method == "clinical_necessity" else "rejected",
            "scope": {"coding": [coding(CONSENT_SCOPE, "patient-privacy", "Privacy Consent")]},
            "category": [{"coding": [coding(LOINC, "59284-0", "Patient Consent")]}],
            "patient": self.patient_ref(),
            "dateTime": instant(consent.recorded_at),
            "policyRule": {"coding": [rule]},
            "provision": provision,
        }
        if consent.consenter == "patient":
            resource["performer"] = [self.patient_ref()]
        elif consent.consenter != "none":
            resource["performer"] = [{"type": "RelatedPerson", "display": consent.consenter_name}]
        if consent.signature_png:
            resource["sourceAttachment"] = {
                "contentType": "image/png",
                "data": base64.b64encode(consent.signature_png).decode("ascii"),
                "title": "Consent signature",
                "creation": instant(consent.recorded_at),
            }
        if consent.method == "verbal":
            # R4 verification has no "verified by": the witnessing staff member is in the extension above.
            resource["verification"] = [
                {"verified": True, "verificationDate": instant(consent.recorded_at)}
                | ({"verifiedWith": self.patient_ref()} if consent.consenter == "patient" else {})
            ]
        full_url = f"urn:uuid:{stable_uuid(self.rid, 'consent')}"
        self.add(full_url, resource, _conditional_create("Consent", identifier))


def site_text(photo: Photo) -> str:
    site = photo.body_site
    if site is None:
        return ""
    return ", ".join(
        part for part in (site.display, site.laterality, site.view and f"{site.view} view") if part
    )


def build_transaction(report: Report, pdf: bytes, settings: BundleSettings) -> dict[str, Any]:
    """The transaction Bundle (JSON-ready dict) for ``report``; photo bytes come from the model."""
    builder = _Builder(report, pdf, settings)
    if settings.create_patient:
        builder.patient()
    for photo in report.photos:
        builder.photo(photo)
    builder.report_pdf()
    builder.consent()
    return {
        "resourceType": "Bundle",
        "id": stable_uuid(report.report_id, "bundle"),
        "type": "transaction",
        "timestamp": instant(report.created_at),
        "entry": builder.entries,
    }
