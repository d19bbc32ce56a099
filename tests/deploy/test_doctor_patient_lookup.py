"""`kiosk doctor`'s patient lookup check against the real test FHIR server (tests/fhir_server.py):
``GET [base]/metadata`` with the lookup's own auth, TLS and timeout, and never a patient identifier."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk import config as kiosk_config
from kiosk import doctor
from kiosk.patient_lookup import PatientLookupConfig
from tests.deploy.test_doctor import KIOSK, by_name
from tests.destinations.conftest import TlsFiles, secret_file, tls_ca  # noqa: F401 (tls_ca: a fixture)
from tests.fhir_server import FhirServer, running

TOKEN = "doctor-lookup-token-5c1f"
MRN_SYSTEM = "https://hospital.example.org/fhir/mrn"
MRN = "MRN-DOCTOR-40917"


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with running(FhirServer(token=TOKEN)) as srv:
        srv.add_patient(MRN_SYSTEM, MRN, name=[{"family": "Rivera"}], birthDate="1980-01-01")
        yield srv


def _lookup(url: str, tmp_path: Path, **overrides: Any) -> PatientLookupConfig:
    if not (tmp_path / "token").exists():
        secret_file(tmp_path / "token", TOKEN)
    fields: dict[str, Any] = {
        "fhir_base_url": url,
        "identifier_system": MRN_SYSTEM,
        "auth": {"type": "bearer", "token_file": tmp_path / "token"},
    }
    return PatientLookupConfig.model_validate({**fields, **overrides})


def _check(config: PatientLookupConfig | None, timeout: float = 3) -> doctor.CheckResult:
    result = doctor.check_patient_lookup(config, timeout)
    assert result.name == "patient lookup"
    if result.status == doctor.FAIL:
        assert result.fix and "\n" not in result.fix and "\n" not in result.detail
    return result


def _asked_only_for_metadata(server: FhirServer) -> None:
    assert server.requests, "the check asked the server"
    for request in server.requests:
        assert request["method"] == "GET" and request["path"].rstrip("?") == "/metadata"
        assert MRN not in str(request) and "identifier" not in request["path"]


def test_skipped_unless_configured_and_on(server: FhirServer, tmp_path: Path) -> None:
    assert _check(None).status == doctor.SKIP
    off = _check(_lookup(server.url, tmp_path, enabled=False))
    assert off.status == doctor.SKIP and "enabled = false" in off.detail
    assert server.requests == []


def test_a_capability_statement_passes(server: FhirServer, tmp_path: Path) -> None:
    result = _check(_lookup(server.url, tmp_path))
    assert result.status == doctor.PASS, result
    assert result.detail == (
        f"{server.url}/metadata answers a CapabilityStatement (FHIR 4.0.1, tests.fhir_server)"
    )
    _asked_only_for_metadata(server)
    (request,) = server.requests
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Accept"] == "application/fhir+json"


def test_refused_credentials(server: FhirServer, tmp_path: Path) -> None:
    config = _lookup(server.url, tmp_path)
    (tmp_path / "token").write_text("not-the-token\n")
    refused = _check(config)
    assert refused.status == doctor.FAIL and "HTTP 401" in refused.detail
    assert refused.fix.startswith("check [patient_lookup] auth")
    (tmp_path / "token").write_text(TOKEN + "\n")
    server.fail_with = [403]
    forbidden = _check(config)
    assert forbidden.status == doctor.FAIL and "HTTP 403" in forbidden.detail
    assert forbidden.fix == refused.fix
    _asked_only_for_metadata(server)


def test_an_unsafe_token_file_fails_before_any_request(server: FhirServer, tmp_path: Path) -> None:
    config = _lookup(server.url, tmp_path)
    (tmp_path / "token").chmod(0o644)
    result = _check(config)
    assert result.status == doctor.FAIL and "readable by everyone" in result.detail
    assert "chmod 600" in result.fix
    assert server.requests == []


def test_tls(tmp_path: Path, tls_ca: TlsFiles) -> None:  # noqa: F811
    with running(FhirServer(token=TOKEN), tls_ca.server_context()) as srv:
        untrusted = _check(_lookup(srv.url, tmp_path))  # system CAs only: the clinic's CA is unknown
        assert untrusted.status == doctor.FAIL and "not trusted" in untrusted.detail
        assert "ca_file" in untrusted.fix
        assert srv.requests == [], "no request over an untrusted connection"
        trusted = _check(_lookup(srv.url, tmp_path, ca_file=tls_ca.ca_file))
        assert trusted.status == doctor.PASS, trusted
        _asked_only_for_metadata(srv)
    with running(FhirServer(token=TOKEN)) as plain:  # https:// to a port that speaks plain HTTP
        result = _check(_lookup(plain.url.replace("http://", "https://"), tmp_path))
        assert result.status == doctor.FAIL and "TLS failed" in result.detail and "ca_file" in result.fix


def test_unreachable_and_silent_servers(tmp_path: Path) -> None:
    with running(FhirServer()) as srv:
        pass  # started and stopped: its port now refuses connections
    down = _check(_lookup(srv.url, tmp_path))
    assert down.status == doctor.FAIL and "cannot reach" in down.detail
    assert down.fix.startswith("check the network")
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        start = time.monotonic()
        # The doctor's --timeout bounds the lookup's own (3 s) timeout.
        silent = _check(_lookup(f"http://127.0.0.1:{listener.getsockname()[1]}", tmp_path), timeout=0.5)
        elapsed = time.monotonic() - start
    assert silent.status == doctor.FAIL and "did not answer within 0.5 s" in silent.detail
    assert silent.fix == down.fix and elapsed < 2


@pytest.mark.parametrize(
    ("reply", "detail", "fix"),
    [
        ((200, "text/html", b"<html>Sign in</html>"), "not FHIR JSON", "fhir_base_url"),
        ((404, "application/fhir+json", b"{}"), "HTTP 404", "fhir_base_url"),
        ((200, "application/fhir+json", b"{not json"), "did not answer JSON", "fhir_base_url"),
        ((200, "application/fhir+json", b'{"resourceType": "Bundle"}'), "a Bundle, not a", "fhir_base_url"),
        ((503, "text/plain", b"maintenance"), "HTTP 503", "administrator"),
    ],
)
def test_answers_that_are_not_a_capability_statement(
    server: FhirServer, tmp_path: Path, reply: tuple[int, str, bytes], detail: str, fix: str
) -> None:
    server.raw_replies = [reply]
    result = _check(_lookup(server.url, tmp_path))
    assert result.status == doctor.FAIL and detail in result.detail and fix in result.fix, result
    assert "Sign in" not in result.detail and "maintenance" not in result.detail


def _station(tmp_path: Path, lookup: str = "") -> Path:
    (tmp_path / "share").mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(mode=0o700, exist_ok=True)
    path = tmp_path / "kiosk.toml"
    path.write_text(
        f'[station]\nid = "doctor-lookup"\ndata_dir = "{tmp_path / "data"}"\n\n'
        f'[[destination]]\nname = "share"\ntype = "folder"\npath = "{tmp_path / "share"}"\n'
        f'encryption = "passphrase"\npassphrase_file = "{tmp_path / "share.key"}"\n' + lookup
    )
    return path


def test_kiosk_doctor_json_and_the_healthz_checks(server: FhirServer, tmp_path: Path) -> None:
    secret_file(tmp_path / "token", TOKEN)
    lookup = (
        f'\n[patient_lookup]\nfhir_base_url = "{server.url}"\nidentifier_system = "{MRN_SYSTEM}"\n'
        f'auth = {{ type = "bearer", token_file = "{tmp_path / "token"}" }}\n'
    )
    config = _station(tmp_path, lookup)
    done = subprocess.run(
        [*KIOSK, "--config", str(config), "doctor", "--json", "--timeout", "3", "--no-hardware"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = by_name(json.loads(done.stdout))
    assert checks["patient lookup"]["status"] == "pass", checks["patient lookup"]
    _asked_only_for_metadata(server)
    # /healthz serves run_checks(hardware=False): the same check, the same data.
    served = {r.name: r for r in doctor.run_checks(kiosk_config.load(config), hardware=False, timeout=3)}
    assert served["patient lookup"].status == doctor.PASS
    without = {r.name: r for r in doctor.run_checks(kiosk_config.load(_station(tmp_path)), hardware=False)}
    assert without["patient lookup"].status == doctor.SKIP
