"""DICOMweb destination: the report as one DICOM study, stored in a PACS with STOW-RS.

The objects are built in dicom_objects.py; here: configuration, the multipart/related request and reading
the store response. One request carries the whole study (photos and PDF), straight from memory.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Literal

from pydantic import Field

from kiosk.destinations.base import DeliveryError, Destination, Parcel
from kiosk.destinations.dicom_objects import DicomSettings, UnsupportedPhoto, study_instances, to_part10
from kiosk.destinations.medical_common import HttpEndpointConfig, Response, load_report, request, status_error

log = logging.getLogger(__name__)

# Failure Reason (0008,1197) values a person must act on; the rest (out of resources 0xA7xx, processing
# failure 0x0110, ...) may pass by themselves. PS3.18 "Store Instances Response Module".
_PERMANENT_FAILURES = frozenset({0x0122, 0x0124, 0xA900, 0xC000, 0xC122})
_FAILED_SOP_SEQUENCE, _REFERENCED_SOP_SEQUENCE, _FAILURE_REASON = "00081198", "00081199", "00081197"


class DicomWebConfig(HttpEndpointConfig):
    type: Literal["dicomweb"]
    institution_name: str = Field(min_length=1, max_length=64, description="Institution Name in the images")
    issuer_of_patient_id: str | None = Field(
        default=None, max_length=64, description="Issuer of Patient ID when the report names none"
    )


class DicomWebDestination(Destination):
    type_name = "dicomweb"
    needs_plaintext = True
    config: DicomWebConfig

    def deliver(self, parcel: Parcel) -> str:
        entries = self.open_bundle(parcel)
        report = load_report(entries)
        settings = DicomSettings(self.config.institution_name, self.config.issuer_of_patient_id)
        try:
            datasets = study_instances(report, entries["report.pdf"], settings)
        except UnsupportedPhoto as exc:
            # The same photo will never fit: a person has to send this report another way.
            raise DeliveryError(f"a photo cannot be stored in DICOM: {exc}", permanent=True) from exc
        study_uid = datasets[0].StudyInstanceUID
        boundary = f"cpk-{secrets.token_hex(16)}"
        parts = []
        for ds in datasets:
            parts += [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                to_part10(ds),
                b"\r\n",
            ]
        parts.append(f"--{boundary}--\r\n".encode())
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        reply = request(
            self.config,
            "POST",
            f"{self.config.base_url}/studies",
            body=b"".join(parts),
            headers=headers,
            service="DICOMweb server",
        )
        stored = _check_store_response(reply, expected=len(datasets))
        log.info("report %s stored as study %s at %s", report.report_id, study_uid, self.name)
        return f"{self.config.base_url} study {study_uid}: {stored} instances stored"


def _sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value = answer.get(tag, {}).get("Value", [])
    return value if isinstance(value, list) else []


def _check_store_response(reply: Response, expected: int) -> int:
    """How many instances the server confirmed; a DeliveryError unless it confirmed all of them."""
    answer = reply.json()
    failed = _sequence(answer, _FAILED_SOP_SEQUENCE) if isinstance(answer, dict) else []
    reasons = sorted(
        {
            int(code)
            for item in failed
            for code in item.get(_FAILURE_REASON, {}).get("Value", [])
            if str(code).isdigit()
        }
    )
    detail = f"failure reasons {', '.join(f'0x{r:04X}' for r in reasons)}" if reasons else ""
    if reply.status in (401, 403) or not (200 <= reply.status < 300 or reply.status == 409):
        raise status_error(reply.status, "DICOMweb server", detail)
    referenced = _sequence(answer, _REFERENCED_SOP_SEQUENCE) if isinstance(answer, dict) else []
    if failed or reply.status == 409 or len(referenced) != expected:
        permanent = bool(reasons) and all(r in _PERMANENT_FAILURES for r in reasons)
        count = len(failed) or expected - len(referenced)
        raise DeliveryError(
            f"DICOMweb server did not store {count} of {expected} instances (HTTP {reply.status})"
            + (f"; {detail}" if detail else ""),
            permanent=permanent,
        )
    return len(referenced)
