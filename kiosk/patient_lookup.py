"""Optional FHIR Patient lookup: the name and date of birth the hospital record holds for a wristband's MRN.

When a wristband carries only a number, the patient screen asks the hospital's FHIR server for the record
(``GET [base]/Patient?identifier=<system>|<mrn>``) and shows its name and date of birth, so the nurse can
confirm the second identifier with the patient instead of typing it. Exactly one match is required.

The lookup is a convenience, never a gate: every failure (no match, several matches, a timeout, a refused
login, an unreadable answer) raises `LookupFailed` with an outcome code, and the screen falls back to typing
the identifier. The answer stays in the session's memory; logs and errors carry the outcome, the server's
host and HTTP status only, never an identifier, a name or the server's body (which can echo them).

`capabilities()` is `kiosk doctor`'s check of the same server, through the same request code (auth, TLS,
timeout): ``GET [base]/metadata``, the FHIR CapabilityStatement, which carries no patient identifier.

`[patient_lookup]` in kiosk.toml; the section is absent (lookup off) by default.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiosk.destinations.base import DeliveryError
from kiosk.destinations.medical_common import Auth, auth_header
from kiosk.destinations.transport import https_base_url, tls_context

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
MAX_ANSWER_BYTES = 1024 * 1024  # two Patients need a few kB; anything far bigger is not a sane answer

Outcome = Literal["not-found", "ambiguous", "no-details", "unreachable", "failed"]
# Why a request failed, for `kiosk doctor`'s fix line ("" where it needs no distinction): an unreadable
# token, password or CA file; TLS; the network; a refused login; a server error; an answer that is not FHIR.
Reason = Literal["", "setup", "tls", "network", "credentials", "server", "answer"]
# Which of a Patient's names to show, best first; "old", "maiden" and "anonymous" names are never shown.
NAME_PREFERENCE: tuple[str | None, ...] = ("official", "usual", None, "temp", "nickname")


class PatientLookupConfig(BaseModel):
    """`[patient_lookup]`: where to look a wristband's MRN up (FHIR R4 Patient search)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    fhir_base_url: str = Field(description="https://…/fhir/r4; plain http for 127.0.0.1/localhost only")
    identifier_system: str = Field(min_length=1, description="identifier system (URI) of the MRN")
    issuer_systems: dict[str, str] = Field(
        default_factory=dict, description="wristband issuer -> identifier system, when bands differ"
    )
    auth: Auth | None = Field(None, description="bearer token file or basic user + password file")
    ca_file: Path | None = Field(None, description="PEM bundle that signs the server's certificate")
    timeout: float = Field(3.0, gt=0, le=10, description="seconds; the nurse is waiting at the screen")

    @field_validator("fhir_base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        return https_base_url(
            value, "fhir_base_url"
        )  # identifiers and names must not cross the network in clear text

    def system_for(self, issuer: str | None) -> str:
        return self.issuer_systems.get(issuer or "") or self.identifier_system


@dataclass(frozen=True)
class PatientDemographics:
    """What the record says; at least one of the two is set. Patient data: kept out of repr()."""

    name: str | None = field(default=None, repr=False)
    birth_date: str | None = field(default=None, repr=False)  # ISO date; partial dates are dropped


class LookupFailed(Exception):
    """The lookup gave no usable record. `outcome` picks the nurse's message; `detail` is for IT (no PHI);
    `reason` says what to fix, for `kiosk doctor`."""

    def __init__(self, outcome: Outcome, detail: str = "", reason: Reason = "") -> None:
        super().__init__(f"{outcome}: {detail}" if detail else outcome)
        self.outcome, self.detail, self.reason = outcome, detail, reason


def lookup(config: PatientLookupConfig, mrn: str, issuer: str | None = None) -> PatientDemographics:
    """The one Patient whose identifier is `mrn`; raises LookupFailed otherwise (never anything else)."""
    start = time.monotonic()
    try:
        try:
            found = _lookup(config, mrn, issuer)
        except LookupFailed:
            raise
        except Exception as exc:  # a convenience must not end the nurse's session with an error page
            raise LookupFailed("failed", f"unexpected {type(exc).__name__}") from exc
    except LookupFailed as exc:
        log.info("patient lookup: %s in %.0f ms %s", exc.outcome, _ms(start), exc.detail)
        raise
    log.info("patient lookup: found in %.0f ms", _ms(start))
    return found


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


def _lookup(config: PatientLookupConfig, mrn: str, issuer: str | None) -> PatientDemographics:
    # _count=2 is enough to tell one match from several; _elements asks only for what is shown.
    query = urlencode(
        {"identifier": f"{config.system_for(issuer)}|{mrn}", "_count": "2", "_elements": "name,birthDate"}
    )
    status, content_type, body = _get(config, f"{config.fhir_base_url}/Patient?{query}")
    if status != 200:
        raise LookupFailed("failed", f"the FHIR server refused the search (HTTP {status})", "answer")
    _expect_json(content_type)
    return _one_patient(body)


def capabilities(config: PatientLookupConfig) -> dict[str, Any]:
    """The server's CapabilityStatement (``GET [base]/metadata``), for `kiosk doctor`: the lookup's own
    request (auth, TLS, timeout) with no patient identifier in it. Raises LookupFailed."""
    url = f"{config.fhir_base_url}/metadata"
    status, content_type, body = _get(config, url)
    if status != 200:
        raise LookupFailed("failed", f"{url} answered HTTP {status}", "answer")
    _expect_json(content_type)
    try:
        statement = json.loads(body)
    except ValueError as exc:
        raise LookupFailed("failed", f"{url} did not answer JSON", "answer") from exc
    kind = statement.get("resourceType") if isinstance(statement, dict) else None
    if kind != "CapabilityStatement":
        raise LookupFailed(
            "failed", f"{url} answered a {kind or 'document'}, not a CapabilityStatement", "answer"
        )
    return statement


def _expect_json(content_type: str) -> None:
    if "json" not in content_type:
        raise LookupFailed(
            "failed", f"the answer is not FHIR JSON ({content_type or 'no content type'})", "answer"
        )


def _get(config: PatientLookupConfig, url: str) -> tuple[int, str, bytes]:
    """One GET, for the lookup and for `kiosk doctor` alike. Network, TLS and secret-file problems, a
    refused login and server errors become LookupFailed (host, reason and status only); other statuses are
    the caller's to judge."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    where = f"the FHIR server at {host}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        headers = {"Accept": FHIR_JSON, "User-Agent": "clinical-photo-kiosk", **auth_header(config.auth)}
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                host, parts.port, timeout=config.timeout, context=tls_context(config.ca_file)
            )
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=config.timeout)
    except DeliveryError as exc:  # an unreadable token/password or CA file: IT must fix the setup
        raise LookupFailed("failed", str(exc), "setup") from exc
    try:
        connection.request("GET", target, headers=headers)
        reply = connection.getresponse()
        body = reply.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            raise LookupFailed("failed", f"{where} sent more than {MAX_ANSWER_BYTES} bytes", "answer")
        status = reply.status
        content_type = reply.getheader("Content-Type", "")
    except ssl.SSLCertVerificationError as exc:
        detail = f"{where}: TLS certificate not trusted ({exc.verify_message})"
        raise LookupFailed("failed", detail, "tls") from exc
    except ssl.SSLError as exc:  # no TLS on that port, no common protocol version or cipher, ...
        detail = f"cannot reach {where}: TLS failed ({exc.reason or type(exc).__name__})"
        raise LookupFailed("unreachable", detail, "tls") from exc
    except TimeoutError as exc:
        detail = f"{where} did not answer within {config.timeout:g} s"
        raise LookupFailed("unreachable", detail, "network") from exc
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise LookupFailed("unreachable", f"cannot reach {where}: {reason}", "network") from exc
    finally:
        connection.close()
    if status in (401, 403):
        detail = f"authentication refused (HTTP {status}); check [patient_lookup] auth"
        raise LookupFailed("failed", detail, "credentials")
    if status in (408, 429) or status >= 500:
        raise LookupFailed("unreachable", f"the FHIR server answered HTTP {status}", "server")
    return status, content_type, body


def _one_patient(body: bytes) -> PatientDemographics:
    # fhir.resources validates the whole answer (R4B models: R4's Bundle and Patient, unchanged); it is
    # imported here so that a station without the lookup never loads it, or needs it installed.
    try:
        from fhir.resources.R4B.bundle import Bundle
        from fhir.resources.R4B.patient import Patient
    except ImportError as exc:
        raise LookupFailed("failed", "the fhir.resources package is not installed on the station") from exc

    try:
        bundle = Bundle.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:  # the messages quote the input: keep only the type
        raise LookupFailed("failed", f"the answer is not a valid FHIR Bundle ({type(exc).__name__})") from exc
    if bundle.type != "searchset":
        raise LookupFailed("failed", f"the answer is a {bundle.type} Bundle, not a searchset")
    matches = [
        entry.resource
        for entry in bundle.entry or []
        if isinstance(entry.resource, Patient)
        and (entry.search is None or entry.search.mode in (None, "match"))
    ]
    count = max(len(matches), bundle.total or 0)
    if count == 0:
        raise LookupFailed("not-found")
    if count > 1:
        raise LookupFailed("ambiguous", f"{count} Patients share the identifier")
    found = PatientDemographics(name=_best_name(matches[0].name or []), birth_date=_full_date(matches[0]))
    if found.name is None and found.birth_date is None:
        raise LookupFailed("no-details", "the Patient has neither a usable name nor a full birth date")
    return found


def _best_name(names: list[Any]) -> str | None:
    """The official name if there is one, else the usual one, and so on (NAME_PREFERENCE)."""
    for use in NAME_PREFERENCE:
        for name in names:
            if name.use == use:
                text = name.text or " ".join([*(name.given or []), name.family or ""])
                text = " ".join(text.split())
                if text:
                    return text
    return None


def _full_date(patient: Any) -> str | None:
    # fhir.resources gives a full date as a date and a partial one ("1980", "1980-03") as text; a year
    # alone cannot be confirmed by asking the patient, so only a full date is shown.
    value = patient.birthDate
    return value.isoformat() if isinstance(value, date) else None
