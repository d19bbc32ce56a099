"""FHIR Patient lookup (kiosk.patient_lookup) against the real test FHIR server: one match, none, several,
authentication, TLS, a server that is down or silent, and answers that are not usable FHIR."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from kiosk import config as config_module
from kiosk.patient_lookup import LookupFailed, PatientDemographics, PatientLookupConfig, lookup
from tests.destinations.conftest import TlsFiles, secret_file, tls_ca  # noqa: F401 (tls_ca: a fixture)
from tests.fhir_server import FhirServer, running

MRN_SYSTEM = "https://hospital.example.org/fhir/mrn"
TOKEN = "lookup-token-8d2e"
MRN = "MRN0012345"
OFFICIAL = {"use": "official", "family": "Rivera", "given": ["Jamie", "Ann"]}


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running(FhirServer(token=TOKEN)) as srv:
        yield srv


def _config(url: str, tmp_path: Path, **overrides: Any) -> PatientLookupConfig:
    secret_file(tmp_path / "token", TOKEN)
    fields: dict[str, Any] = {
        "fhir_base_url": url,
        "identifier_system": MRN_SYSTEM,
        "auth": {"type": "bearer", "token_file": tmp_path / "token"},
    }
    return PatientLookupConfig.model_validate({**fields, **overrides})


def _fails(config: PatientLookupConfig, mrn: str = MRN, issuer: str | None = None) -> LookupFailed:
    with pytest.raises(LookupFailed) as caught:
        lookup(config, mrn, issuer)
    return caught.value


def test_one_match_gives_the_official_name_and_birth_date(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(
        MRN_SYSTEM,
        MRN,
        name=[{"use": "usual", "given": ["Jay"]}, {"use": "old", "family": "Smith"}, OFFICIAL],
        birthDate="1980-01-01",
        gender="female",
    )
    server.add_patient(MRN_SYSTEM, "MRN0099999", name=[{"family": "Other"}])
    found = lookup(_config(server.url, tmp_path), MRN)
    assert found == PatientDemographics(name="Jamie Ann Rivera", birth_date="1980-01-01")
    assert MRN not in repr(found) and "Rivera" not in repr(found)
    (request,) = server.requests
    query = parse_qs(urlsplit(request["path"]).query)
    assert request["method"] == "GET" and request["path"].startswith("/Patient?")
    assert query["identifier"] == [f"{MRN_SYSTEM}|{MRN}"]
    assert request["headers"]["Accept"] == "application/fhir+json"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_name_text_and_usual_names(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, MRN, name=[{"use": "maiden", "family": "X"}, {"text": "  Sam   Taylor "}])
    assert lookup(_config(server.url, tmp_path), MRN) == PatientDemographics(name="Sam Taylor")


def test_no_match(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient("urn:oid:1.2.3", MRN, birthDate="1980-01-01")  # same number, another system
    assert _fails(_config(server.url, tmp_path)).outcome == "not-found"


def test_several_matches(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, MRN, name=[OFFICIAL], birthDate="1980-01-01")
    server.add_patient(MRN_SYSTEM, MRN, name=[{"family": "Lee"}], birthDate="1975-06-30")
    failed = _fails(_config(server.url, tmp_path))
    assert failed.outcome == "ambiguous"
    assert "Rivera" not in str(failed) and "Lee" not in str(failed)


def test_issuer_picks_its_identifier_system(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient("urn:oid:1.2.3", MRN, birthDate="1990-02-03")
    config = _config(server.url, tmp_path, issuer_systems={"STMARY": "urn:oid:1.2.3"})
    assert lookup(config, MRN, "STMARY").birth_date == "1990-02-03"
    assert _fails(config, issuer="ELSEWHERE").outcome == "not-found"  # falls back to identifier_system


def test_a_record_without_usable_details(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, MRN, birthDate="1980")  # a year alone cannot be confirmed
    assert _fails(_config(server.url, tmp_path)).outcome == "no-details"


def test_partial_birth_date_leaves_the_name(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, MRN, name=[OFFICIAL], birthDate="1980-03")
    assert lookup(_config(server.url, tmp_path), MRN) == PatientDemographics(name="Jamie Ann Rivera")


def test_wrong_token_is_refused(server: FhirServer, tmp_path: Path) -> None:
    config = _config(server.url, tmp_path)
    (tmp_path / "token").write_text("wrong\n")
    failed = _fails(config)
    assert failed.outcome == "failed" and "HTTP 401" in failed.detail


def test_unreadable_token_file(server: FhirServer, tmp_path: Path) -> None:
    config = _config(server.url, tmp_path)
    (tmp_path / "token").chmod(0o644)
    failed = _fails(config)
    assert failed.outcome == "failed" and "readable by everyone" in failed.detail
    assert server.requests == [], "no request without a safe credential"


def test_basic_auth(tmp_path: Path) -> None:
    secret_file(tmp_path / "password", "s3cret")
    with running(FhirServer(basic=("kiosk", "s3cret"))) as srv:
        srv.add_patient(MRN_SYSTEM, MRN, birthDate="1980-01-01")
        auth = {"type": "basic", "username": "kiosk", "password_file": tmp_path / "password"}
        assert lookup(_config(srv.url, tmp_path, auth=auth), MRN).birth_date == "1980-01-01"
        assert _fails(_config(srv.url, tmp_path, auth=None)).outcome == "failed"


def test_https_with_the_clinics_ca(tmp_path: Path, tls_ca: TlsFiles) -> None:  # noqa: F811
    with running(FhirServer(), tls_ca.server_context()) as srv:
        srv.add_patient(MRN_SYSTEM, MRN, birthDate="1980-01-01")
        assert lookup(_config(srv.url, tmp_path, ca_file=tls_ca.ca_file), MRN).birth_date == "1980-01-01"
        failed = _fails(_config(srv.url, tmp_path))  # system CAs only: the clinic's CA is unknown
        assert failed.outcome == "failed" and "not trusted" in failed.detail


def test_server_down(tmp_path: Path) -> None:
    with running(FhirServer()) as srv:
        pass  # started and stopped: its port now refuses connections
    start = time.monotonic()
    failed = _fails(_config(srv.url, tmp_path))
    assert failed.outcome == "unreachable" and "cannot reach" in failed.detail
    assert time.monotonic() - start < 1


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        failed = _fails(_config(url, tmp_path, timeout=0.5))
        elapsed = time.monotonic() - start
    assert failed.outcome == "unreachable" and "did not answer within 0.5 s" in failed.detail
    assert 0.4 < elapsed < 2


def test_server_errors_are_unreachable(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, MRN, birthDate="1980-01-01")
    config = _config(server.url, tmp_path)
    server.fail_with = [503]
    assert _fails(config).outcome == "unreachable"
    assert lookup(config, MRN).birth_date == "1980-01-01"  # and the next try goes through


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ((200, "text/html", b"<html>login</html>"), "not FHIR JSON"),
        ((200, "application/fhir+json", b"{not json"), "not a valid FHIR Bundle"),
        ((200, "application/fhir+json", b'{"resourceType": "Patient", "id": "x"}'), "not a valid FHIR"),
        ((200, "application/fhir+json", b'{"resourceType": "Bundle", "type": "history"}'), "history"),
        ((404, "application/fhir+json", b"{}"), "HTTP 404"),
    ],
)
def test_malformed_answers(
    server: FhirServer, tmp_path: Path, reply: tuple[int, str, bytes], detail: str
) -> None:
    server.raw_replies = [reply]
    failed = _fails(_config(server.url, tmp_path))
    assert failed.outcome == "failed" and detail in failed.detail


def test_invalid_fhir_in_a_match_is_refused(server: FhirServer, tmp_path: Path) -> None:
    server.add_patient(MRN_SYSTEM, MRN, name=[OFFICIAL], birthDate="01/01/1980")  # not a FHIR date
    failed = _fails(_config(server.url, tmp_path))
    assert failed.outcome == "failed" and "01/01/1980" not in failed.detail


def test_no_patient_data_in_logs_or_errors(
    server: FhirServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = _config(server.url, tmp_path)
    messages = [str(_fails(config))]
    server.add_patient(MRN_SYSTEM, MRN, name=[OFFICIAL], birthDate="1980-01-01")
    lookup(config, MRN)
    server.add_patient(MRN_SYSTEM, MRN, name=[OFFICIAL], birthDate="1980-01-01")
    messages.append(str(_fails(config)))
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("kiosk")]
    assert any("found" in line for line in logged)
    text = "\n".join(messages + logged)
    for secret in (MRN, "Jamie", "Rivera", "1980"):
        assert secret not in text


def test_config_is_checked(tmp_path: Path) -> None:
    base = {"identifier_system": MRN_SYSTEM}
    config = PatientLookupConfig.model_validate({**base, "fhir_base_url": "https://fhir.example.org/r4/"})
    assert config.fhir_base_url == "https://fhir.example.org/r4" and config.timeout == 3
    with pytest.raises(ValidationError, match="https"):
        PatientLookupConfig.model_validate({**base, "fhir_base_url": "http://fhir.example.org/r4"})
    with pytest.raises(ValidationError, match="identifier_system"):
        PatientLookupConfig.model_validate({"fhir_base_url": "https://fhir.example.org"})
    with pytest.raises(ValidationError, match="timeout"):
        PatientLookupConfig.model_validate({**base, "fhir_base_url": "https://x.org", "timeout": 60})


def test_off_unless_configured(tmp_path: Path) -> None:
    station = '[station]\nid = "s1"\ndata_dir = "/var/lib/kiosk"\n'
    path = tmp_path / "kiosk.toml"
    path.write_text(station)
    assert config_module.load(path).patient_lookup is None
    path.write_text(
        station
        + '\n[patient_lookup]\nfhir_base_url = "https://fhir.example.org/r4"\n'
        + f'identifier_system = "{MRN_SYSTEM}"\n'
        + 'auth = { type = "bearer", token_file = "/etc/kiosk/fhir.token" }\n'
    )
    loaded = config_module.load(path).patient_lookup
    assert loaded is not None and loaded.enabled and loaded.auth is not None
    path.write_text(station + '\n[patient_lookup]\nfhir_base_url = "https://x.org"\nsystem = "urn:x"\n')
    with pytest.raises(config_module.ConfigError, match=r"line 7: patient_lookup.system: unknown setting"):
        config_module.load(path)
