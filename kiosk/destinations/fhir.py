"""FHIR R4 destination: the report as one transaction Bundle posted to a FHIR server.

The bundle is built in fhir_bundle.py. Here: configuration, finding the patient's identifier system, the
patient check, the POST and reading the transaction-response. Plaintext exists only in memory.
"""

from __future__ import annotations

import json
import logging
from typing import Literal
from urllib.parse import urlencode

from pydantic import Field, model_validator

from kiosk.destinations.base import DeliveryError, Destination, Parcel
from kiosk.destinations.fhir_bundle import BundleSettings, build_transaction
from kiosk.destinations.medical_common import HttpEndpointConfig, Response, load_report, request, status_error
from kiosk.report.model import Report

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


class FhirConfig(HttpEndpointConfig):
    type: Literal["fhir"]
    photo_resource: Literal["DocumentReference", "Media"] = Field(
        default="DocumentReference",
        description="DocumentReference is supported everywhere; Media is R4's imaging resource (gone in R5)",
    )
    patient_identifier_system: str | None = Field(
        default=None,
        description="Identifier system (URI) of the MRN when the issuer is not in issuer_systems",
    )
    issuer_systems: dict[str, str] = Field(
        default_factory=dict, description="Report patient issuer -> identifier system URI"
    )
    create_patient: bool = Field(
        default=False, description="Create the Patient (conditionally) when the server does not know it"
    )
    staff_identifier_system: str = "urn:clinical-photo-kiosk:staff"
    station_identifier_system: str = "urn:clinical-photo-kiosk:station"

    @model_validator(mode="after")
    def _some_patient_system(self) -> FhirConfig:
        if not self.patient_identifier_system and not self.issuer_systems:
            raise ValueError("set patient_identifier_system or issuer_systems (the MRN's identifier system)")
        return self


class FhirDestination(Destination):
    type_name = "fhir"
    needs_plaintext = True
    config: FhirConfig

    def deliver(self, parcel: Parcel) -> str:
        entries = self.open_bundle(parcel)
        report = load_report(entries)
        settings = BundleSettings(
            base_url=self.config.base_url,
            patient_system=self._patient_system(report),
            photo_resource=self.config.photo_resource,
            create_patient=self.config.create_patient,
            staff_system=self.config.staff_identifier_system,
            station_system=self.config.station_identifier_system,
        )
        if not settings.create_patient:
            self._check_patient(settings.patient_system, report.patient.mrn)
        bundle = build_transaction(report, entries["report.pdf"], settings)
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        reply = self._send("POST", self.config.base_url, body)
        if not 200 <= reply.status < 300:
            raise status_error(reply.status, "FHIR server", _outcome_codes(reply))
        created, existing = _count_results(reply, expected=len(bundle["entry"]))
        log.info("report %s delivered to FHIR destination %s", report.report_id, self.name)
        return (
            f"{self.config.base_url} transaction: {len(bundle['entry'])} entries,"
            f" {created} created, {existing} already there"
        )

    def _patient_system(self, report: Report) -> str:
        issuer = report.patient.issuer
        system = self.config.issuer_systems.get(issuer or "") or self.config.patient_identifier_system
        if not system:
            # The issuer is an organisation's name, not patient data: naming it helps the administrator.
            raise DeliveryError(
                f"no FHIR identifier system is configured for issuer {issuer!r}", permanent=True
            )
        return system

    def _check_patient(self, system: str, mrn: str) -> None:
        """Resolve the conditional reference first, so "unknown patient" gets its own clear message.

        Servers disagree on how a failed conditional reference inside a transaction is reported (400, 404,
        412), so asking first is the only way to tell that case apart from a malformed bundle.
        """
        query = urlencode({"identifier": f"{system}|{mrn}", "_elements": "id", "_count": "2"})
        reply = self._send("GET", f"{self.config.base_url}/Patient?{query}")
        if not 200 <= reply.status < 300:
            raise status_error(reply.status, "FHIR patient search", _outcome_codes(reply))
        found = reply.json()
        if not isinstance(found, dict) or found.get("resourceType") != "Bundle":
            raise DeliveryError("FHIR patient search: the answer is not a FHIR Bundle", permanent=True)
        matches = [e for e in found.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        count = found.get("total", len(matches))
        if count == 0:
            # Transient on purpose: registration often reaches the FHIR server after the wristband is
            # printed, so the outbox keeps retrying (with backoff) and the report is sent once it exists.
            raise DeliveryError(
                f"the patient is not (yet) registered on the FHIR server under identifier system {system};"
                " will retry (or enable create_patient)"
            )
        if count > 1:
            raise DeliveryError(
                f"several Patients on the FHIR server share this identifier (system {system});"
                " an administrator must merge them",
                permanent=True,
            )

    def _send(self, method: str, url: str, body: bytes | None = None) -> Response:
        headers = {"Accept": FHIR_JSON}
        if body is not None:
            headers["Content-Type"] = f"{FHIR_JSON}; fhirVersion=4.0"
            headers["Prefer"] = "return=minimal"  # don't echo megabytes of base64 back to the Pi
        return request(self.config, method, url, body=body, headers=headers, service="FHIR server")


def _outcome_codes(reply: Response) -> str:
    """Issue severities and codes of an OperationOutcome: diagnostics texts can echo identifiers."""
    outcome = reply.json()
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issues = [f"{i.get('severity', '?')}/{i.get('code', '?')}" for i in outcome.get("issue", [])][:5]
    return f"OperationOutcome {', '.join(issues)}" if issues else ""


def _count_results(reply: Response, expected: int) -> tuple[int, int]:
    answer = reply.json()
    if not isinstance(answer, dict) or answer.get("type") != "transaction-response":
        raise DeliveryError("FHIR server: the answer is not a transaction-response Bundle", permanent=True)
    statuses = [str(e.get("response", {}).get("status", "")) for e in answer.get("entry", [])]
    if len(statuses) != expected or not all(s[:1] == "2" for s in statuses):
        # A transaction is all or nothing; anything else is a server we should not trust with reports.
        raise DeliveryError(
            "FHIR server: the transaction-response does not confirm every entry", permanent=True
        )
    created = sum(s.startswith("201") for s in statuses)
    return created, len(statuses) - created
