"""FHIR R4 destination: the transaction Bundle it builds, and delivery to a real FHIR server over HTTP."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from kiosk.destinations import fhir as fhir_module
from kiosk.destinations.base import DeliveryError, Parcel
from kiosk.destinations.fhir import FhirConfig, FhirDestination
from kiosk.destinations.fhir_bundle import (
    ACT_REASON,
    REPORT_SYSTEM,
    SNOMED,
    BundleSettings,
    build_transaction,
)
from kiosk.destinations.registry import build
from kiosk.report.model import Report
from tests.destinations.conftest import TlsFiles, sealed_parcel, secret_file
from tests.factories import sample_consent, sample_report, signature_png
from tests.fhir_server import FhirServer, running

PASSPHRASE = "Zk3q-9vLr_xW2pT7mN4bY8cH1jF6sD0gA5eU"
MRN_SYSTEM = "https://hospital.example.org/fhir/mrn"
TOKEN = "test-token-5b1f"


def _seal(folder: Path, report: Report) -> Parcel:
    key = secret_file(folder / "station.key", PASSPHRASE)
    return sealed_parcel(folder, report=report, passphrase_file=key).parcel


@pytest.fixture(scope="module")
def report() -> Report:
    return sample_report(photo_count=2)


@pytest.fixture(scope="module")
def parcel(report: Report, tmp_path_factory: pytest.TempPathFactory) -> Parcel:
    return _seal(tmp_path_factory.mktemp("sealed"), report)


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running(FhirServer(token=TOKEN)) as srv:
        yield srv


def _destination(server: FhirServer, tmp_path: Path, **overrides: Any) -> FhirDestination:
    secret_file(tmp_path / "fhir.key", PASSPHRASE)
    secret_file(tmp_path / "token", TOKEN)
    fields: dict[str, Any] = {
        "name": "ehr",
        "type": "fhir",
        "base_url": server.url,
        "encryption": "passphrase",
        "passphrase_file": tmp_path / "fhir.key",
        "auth": {"type": "bearer", "token_file": tmp_path / "token"},
        "patient_identifier_system": MRN_SYSTEM,
        "timeout": 10,
    }
    destination = build(FhirConfig.model_validate({**fields, **overrides}))
    assert isinstance(destination, FhirDestination)
    return destination


def _bundle(report: Report, **settings: Any) -> dict[str, Any]:
    built = build_transaction(
        report, b"%PDF-1.4 test", BundleSettings(base_url="http://x", patient_system=MRN_SYSTEM, **settings)
    )
    Bundle.model_validate(built)  # every bundle must be valid FHIR (R4B models: R4's resources unchanged)
    return built


def _of_type(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


# -- the bundle -------------------------------------------------------------------------------------


def test_bundle_structure_references_and_codes(report: Report) -> None:
    bundle = _bundle(report)
    assert bundle["type"] == "transaction"
    assert len(_of_type(bundle, "Binary")) == 3  # two photos and the PDF
    documents = _of_type(bundle, "DocumentReference")
    assert len(documents) == 3
    assert len(_of_type(bundle, "Consent")) == 1
    assert not _of_type(bundle, "Patient"), "patients are not created unless configured"

    patient_ref = f"Patient?identifier={MRN_SYSTEM.replace(':', '%3A').replace('/', '%2F')}%7CMRN0012345"
    binaries = {e["request"]["url"]: e for e in _of_type(bundle, "Binary")}
    for entry, photo in zip(documents[:2], report.photos, strict=True):
        resource = entry["resource"]
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert entry["request"] == {
            "method": "POST",
            "url": "DocumentReference",
            "ifNoneExist": "identifier=urn%3Aclinical-photo-kiosk%3Areport%7C"
            + f"{report.report_id}%2F{photo.id}",
        }
        assert resource["identifier"] == [
            {"system": REPORT_SYSTEM, "value": f"{report.report_id}/{photo.id}"}
        ]
        assert resource["subject"] == {"reference": patient_ref}
        attachment = resource["content"][0]["attachment"]
        binary = binaries[attachment["url"]]
        assert binary["request"]["method"] == "PUT"
        assert base64.b64decode(binary["resource"]["data"]) == photo.jpeg
        assert binary["resource"]["securityContext"] == {"reference": entry["fullUrl"]}
        assert attachment["contentType"] == "image/jpeg" and attachment["size"] == photo.size
        # Body site: the R4 core bodySite extension points at a contained BodyStructure.
        (extension,) = resource["extension"]
        assert extension == {
            "url": "http://hl7.org/fhir/StructureDefinition/bodySite",
            "valueReference": {"reference": "#body-site"},
        }
        (body,) = resource["contained"]
        assert body["location"]["coding"] == [
            {"system": SNOMED, "code": "30021000", "display": "Lower leg structure"}
        ]
        qualifiers = [q["coding"][0]["code"] for q in body["locationQualifier"]]
        assert qualifiers == ["7771000", "255549009"]  # left, anterior (front view)
        authors = resource["author"]
        assert authors[0]["identifier"]["value"] == "RN-1234" and authors[0]["type"] == "Practitioner"
        assert authors[1]["identifier"]["value"] == "station-01" and authors[1]["type"] == "Device"
        assert resource["context"]["period"]["start"] == "2024-05-06T07:08:09Z"
    pdf = documents[2]["resource"]
    assert pdf["identifier"] == [{"system": REPORT_SYSTEM, "value": report.report_id}]
    assert pdf["content"][0]["attachment"]["contentType"] == "application/pdf"
    assert (
        base64.b64decode(binaries[pdf["content"][0]["attachment"]["url"]]["resource"]["data"])
        == b"%PDF-1.4 test"
    )


def test_consent_records_purposes_and_signature(report: Report) -> None:
    (entry,) = _of_type(_bundle(report), "Consent")
    consent = entry["resource"]
    assert consent["status"] == "active"
    assert consent["scope"]["coding"][0]["code"] == "patient-privacy"
    assert consent["category"][0]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "59284-0",
        "display": "Patient Consent",
    }
    provision = consent["provision"]
    assert provision["type"] == "permit"
    assert [(c["system"], c["code"]) for c in provision["purpose"]] == [
        (ACT_REASON, "TREAT"),
        (ACT_REASON, "RECORDMGT"),
    ]
    (denied,) = provision["provision"]
    assert denied["type"] == "deny"
    assert [c["code"] for c in denied["purpose"]] == ["TRAIN", "HRESCH", "publication"]
    assert base64.b64decode(consent["sourceAttachment"]["data"]) == signature_png()
    assert consent["performer"] == [consent["patient"]]
    record = {e["url"]: e for e in consent["extension"][0]["extension"]}
    assert record["method"]["valueCode"] == "written"
    assert record["textVersion"]["valueString"] == "wound-photo-consent-2024-03"


def test_verbal_consent_is_verified_and_witnessed() -> None:
    verbal = sample_report(
        consent=sample_consent(method="verbal", signature_png=None, witness_staff_id="RN-9")
    )
    (entry,) = _of_type(_bundle(verbal), "Consent")
    consent = entry["resource"]
    assert "sourceAttachment" not in consent
    (verification,) = consent["verification"]
    assert verification["verified"] is True and verification["verifiedWith"] == consent["patient"]
    record = {e["url"]: e for e in consent["extension"][0]["extension"]}
    assert record["witness"]["valueReference"]["identifier"]["value"] == "RN-9"


def test_guardian_and_clinical_necessity_consents() -> None:
    guardian = sample_report(consent=sample_consent(consenter="guardian", consenter_name="Sam Rivera"))
    (entry,) = _of_type(_bundle(guardian), "Consent")
    assert entry["resource"]["performer"] == [{"type": "RelatedPerson", "display": "Sam Rivera"}]
    necessity = sample_report(
        consent=sample_consent(
            consenter="none",
            method="clinical_necessity",
            signature_png=None,
            exception_reason="Unconscious, wound assessment needed",
        )
    )
    (entry,) = _of_type(_bundle(necessity), "Consent")
    consent = entry["resource"]
    assert "performer" not in consent
    assert consent["policyRule"]["coding"][0]["code"] == "clinical-necessity"
    record = {e["url"]: e for e in consent["extension"][0]["extension"]}
    assert record["exceptionReason"]["valueString"] == "Unconscious, wound assessment needed"
    declined = sample_report(
        consent=sample_consent(
            purposes=dict.fromkeys(
                ("clinical_care", "medical_record", "education", "research", "publication"), False
            )
        )
    )
    (entry,) = _of_type(_bundle(declined), "Consent")
    assert entry["resource"]["status"] == "rejected"
    assert entry["resource"]["provision"]["type"] == "deny"
    assert entry["resource"]["policyRule"]["coding"][0]["code"] == "OPTOUT"


def test_media_variant_and_created_patient(report: Report) -> None:
    bundle = _bundle(report, photo_resource="Media", create_patient=True)
    (patient,) = _of_type(bundle, "Patient")
    assert (
        patient["request"]["ifNoneExist"]
        == "identifier=https%3A%2F%2Fhospital.example.org%2Ffhir%2Fmrn%7CMRN0012345"
    )
    assert patient["resource"]["birthDate"] == "1950-01-02"
    media = _of_type(bundle, "Media")
    assert len(media) == 2
    first = media[0]["resource"]
    assert first["subject"] == {"reference": patient["fullUrl"]}
    assert first["bodySite"]["coding"][0]["code"] == "30021000"
    assert first["modality"]["coding"][0]["code"] == "XC"
    assert first["operator"]["identifier"]["value"] == "RN-1234"
    assert first["content"]["contentType"] == "image/jpeg"
    assert (first["width"], first["height"]) == (640, 480)


def test_identifiers_are_stable_across_builds(report: Report) -> None:
    first, second = _bundle(report), _bundle(report)
    assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in second["entry"]]
    other = _bundle(sample_report(photo_count=2))
    assert not {e["fullUrl"] for e in first["entry"]} & {e["fullUrl"] for e in other["entry"]}


# -- delivery to a real server ----------------------------------------------------------------------


def test_delivers_to_a_fhir_server_with_bearer_auth(
    server: FhirServer, parcel: Parcel, report: Report, tmp_path: Path
) -> None:
    patient_id = server.add_patient(MRN_SYSTEM, "MRN0012345")
    receipt = _destination(server, tmp_path).deliver(parcel)
    assert "7 entries, 7 created" in receipt
    documents = server.resources("DocumentReference")
    assert (
        len(documents) == 3 and len(server.resources("Binary")) == 3 and len(server.resources("Consent")) == 1
    )
    assert len(server.resources("Patient")) == 1
    binaries = {f"Binary/{b['id']}": b for b in server.resources("Binary")}
    for document in documents:
        assert document["subject"] == {"reference": f"Patient/{patient_id}"}
        assert document["content"][0]["attachment"]["url"] in binaries
    by_value = {d["identifier"][0]["value"]: d for d in documents}
    photo_doc = by_value[f"{report.report_id}/photo-01"]
    assert photo_doc["contained"][0]["patient"] == {"reference": f"Patient/{patient_id}"}
    binary = binaries[photo_doc["content"][0]["attachment"]["url"]]
    assert base64.b64decode(binary["data"]) == report.photos[0].jpeg
    assert binary["securityContext"]["reference"].startswith("DocumentReference/")
    assert server.resources("Consent")[0]["patient"] == {"reference": f"Patient/{patient_id}"}
    # Every request carried the token; the transaction went as FHIR JSON.
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in server.requests)
    post = next(r for r in server.requests if r["method"] == "POST")
    assert post["headers"]["Content-Type"].startswith("application/fhir+json")
    # The server's own search finds the report by its identifier.
    found = requests.get(
        f"{server.url}/DocumentReference",
        params={"identifier": f"{REPORT_SYSTEM}|{report.report_id}"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["content"][0]["attachment"]["contentType"] == "application/pdf"


def test_resending_creates_nothing_new(server: FhirServer, parcel: Parcel, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, "MRN0012345")
    destination = _destination(server, tmp_path)
    destination.deliver(parcel)
    counts = {t: len(server.resources(t)) for t in ("DocumentReference", "Binary", "Consent", "Patient")}
    receipt = destination.deliver(parcel)
    assert "0 created, 7 already there" in receipt
    assert {t: len(server.resources(t)) for t in counts} == counts


def test_create_patient_creates_it_once(server: FhirServer, parcel: Parcel, tmp_path: Path) -> None:
    destination = _destination(server, tmp_path, create_patient=True, photo_resource="Media")
    destination.deliver(parcel)
    destination.deliver(parcel)
    (patient,) = server.resources("Patient")
    assert patient["identifier"] == [{"system": MRN_SYSTEM, "value": "MRN0012345"}]
    media = server.resources("Media")
    assert len(media) == 2
    assert {m["subject"]["reference"] for m in media} == {f"Patient/{patient['id']}"}


def test_issuer_maps_to_its_identifier_system(server: FhirServer, parcel: Parcel, tmp_path: Path) -> None:
    system = "urn:oid:1.2.3.4.5"
    server.add_patient(system, "MRN0012345")
    server.add_patient(MRN_SYSTEM, "MRN0012345")  # same MRN, other issuer: must not be picked
    destination = _destination(server, tmp_path, issuer_systems={"Example General Hospital": system})
    destination.deliver(parcel)
    wanted = next(p["id"] for p in server.resources("Patient") if p["identifier"][0]["system"] == system)
    assert {d["subject"]["reference"] for d in server.resources("DocumentReference")} == {f"Patient/{wanted}"}


def test_unknown_patient_is_retried_with_a_clear_message(
    server: FhirServer, parcel: Parcel, tmp_path: Path
) -> None:
    with pytest.raises(DeliveryError) as caught:
        _destination(server, tmp_path).deliver(parcel)
    assert not caught.value.permanent, "the patient may be registered later: keep retrying"
    assert "not (yet) registered" in str(caught.value)
    assert "MRN0012345" not in str(caught.value)
    assert not server.resources("DocumentReference")


def test_ambiguous_patient_needs_a_person(server: FhirServer, parcel: Parcel, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, "MRN0012345")
    server.add_patient(MRN_SYSTEM, "MRN0012345")
    with pytest.raises(DeliveryError, match="merge") as caught:
        _destination(server, tmp_path).deliver(parcel)
    assert caught.value.permanent


def test_server_errors_are_transient(server: FhirServer, parcel: Parcel, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, "MRN0012345")
    destination = _destination(server, tmp_path)
    server.fail_with = [503]
    with pytest.raises(DeliveryError, match="HTTP 503") as caught:
        destination.deliver(parcel)
    assert not caught.value.permanent
    assert "created" in destination.deliver(parcel)  # and the next attempt goes through


def test_wrong_token_is_permanent(server: FhirServer, parcel: Parcel, tmp_path: Path) -> None:
    destination = _destination(server, tmp_path)
    (tmp_path / "token").write_text("wrong")
    with pytest.raises(DeliveryError, match="authentication refused") as caught:
        destination.deliver(parcel)
    assert caught.value.permanent


def test_basic_auth(parcel: Parcel, tmp_path: Path) -> None:
    secret_file(tmp_path / "password", "s3cret")
    with running(FhirServer(basic=("kiosk", "s3cret"))) as srv:
        srv.add_patient(MRN_SYSTEM, "MRN0012345")
        auth = {"type": "basic", "username": "kiosk", "password_file": tmp_path / "password"}
        assert "created" in _destination(srv, tmp_path, auth=auth).deliver(parcel)


def test_https_with_the_clinics_ca(parcel: Parcel, tmp_path: Path, tls_ca: TlsFiles) -> None:
    with running(FhirServer(token=TOKEN), tls_ca.server_context()) as srv:
        srv.add_patient(MRN_SYSTEM, "MRN0012345")
        assert srv.url.startswith("https://")
        assert "created" in _destination(srv, tmp_path, ca_file=tls_ca.ca_file).deliver(parcel)
        with pytest.raises(DeliveryError, match="TLS certificate not trusted") as caught:
            _destination(srv, tmp_path).deliver(parcel)  # system CAs only: the clinic's CA is unknown
        assert caught.value.permanent


def test_server_down_is_transient(parcel: Parcel, tmp_path: Path) -> None:
    with running(FhirServer()) as srv:
        pass  # started and stopped: its port now refuses connections
    with pytest.raises(DeliveryError, match="cannot reach FHIR server") as caught:
        _destination(srv, tmp_path).deliver(parcel)
    assert not caught.value.permanent


def test_invalid_bundle_is_refused_by_the_server_and_permanent(
    server: FhirServer, parcel: Parcel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.add_patient(MRN_SYSTEM, "MRN0012345")

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bundle = build_transaction(*args, **kwargs)
        bundle["entry"][0]["resource"]["unknownElement"] = 1
        return bundle

    monkeypatch.setattr(fhir_module, "build_transaction", broken)
    with pytest.raises(
        DeliveryError, match=r"rejected \(HTTP 400\); OperationOutcome error/invalid"
    ) as caught:
        _destination(server, tmp_path).deliver(parcel)
    assert caught.value.permanent
    assert not server.resources("Binary"), "a refused transaction stores nothing"


def test_no_patient_data_in_logs_or_errors(
    server: FhirServer, parcel: Parcel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    destination = _destination(server, tmp_path)
    messages = []
    for fail in ([], [500], [400]):
        server.fail_with = list(fail)
        try:
            destination.deliver(parcel)
        except DeliveryError as exc:
            messages.append(str(exc))
    server.add_patient(MRN_SYSTEM, "MRN0012345")
    messages.append(destination.deliver(parcel))
    # The kiosk's own logs; the test server's access log is the far side's business.
    text = "\n".join(messages + [r.getMessage() for r in caplog.records if r.name.startswith("kiosk")])
    for secret in ("MRN0012345", "Jamie", "Rivera", "1950"):
        assert secret not in text


def test_config_is_checked() -> None:
    base = {"name": "ehr", "type": "fhir", "patient_identifier_system": MRN_SYSTEM}
    FhirConfig.model_validate({**base, "base_url": "https://fhir.example.org/r4/"})
    with pytest.raises(ValidationError, match="https"):
        FhirConfig.model_validate({**base, "base_url": "http://fhir.example.org/r4"})
    with pytest.raises(ValidationError, match="identifier system"):
        FhirConfig.model_validate({"name": "ehr", "type": "fhir", "base_url": "https://fhir.example.org"})


def test_the_test_server_refuses_invalid_fhir(server: FhirServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Consent"}}],
    }
    reply = requests.post(server.url, data=json.dumps(bad), headers=headers, timeout=5)
    assert reply.status_code == 400
    assert reply.json()["resourceType"] == "OperationOutcome"
