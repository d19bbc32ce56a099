"""The patient screen with `[patient_lookup]`: a wristband that carries only a number is looked up on a real
FHIR server; the nurse confirms the record's date of birth with the patient. No match, several matches and a
server that is down each say so in plain words and fall back to typing the second identifier."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.app.conftest import (
    Station,
    choose_site,
    report_json,
    send,
    sign_in_with_pin,
    start_station,
    station_toml,
    take_photos,
    verbal_consent,
)
from tests.destinations.conftest import free_port, secret_file
from tests.fhir_server import FhirServer, running

MRN_SYSTEM = "https://hospital.example.org/fhir/mrn"
TOKEN = "station-lookup-token-41c9"
BAND_MRN = "MRN0012345"  # what the mock camera's DataMatrix wristband carries: a number and nothing else
NAME, DOB = "Jamie Rivera", "1980-01-01"


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServer]:
    with running(FhirServer(token=TOKEN)) as server:
        server.add_patient(
            MRN_SYSTEM,
            BAND_MRN,
            name=[
                {"use": "usual", "given": ["Jay"]},
                {"use": "official", "family": "Rivera", "given": ["Jamie"]},
            ],
            birthDate=DOB,
        )
        for _ in range(2):  # a duplicate registration: two records share a number
            server.add_patient(MRN_SYSTEM, "MRN0066666", birthDate="1970-07-07")
        yield server


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory, fhir: FhirServer) -> Iterator[Station]:
    root = tmp_path_factory.mktemp("station-lookup")
    token = secret_file(root / "fhir.token", TOKEN)
    lookup = f"""
[patient_lookup]
fhir_base_url = "{fhir.url}"
identifier_system = "{MRN_SYSTEM}"
auth = {{ type = "bearer", token_file = "{token}" }}
timeout = 2
"""
    running_station, stop = start_station(root, station_toml(root, extra=lookup))
    yield running_station
    stop()


def _events(station: Station, name: str) -> list[dict]:
    return [r.details for r in station.runtime.events.recent(30) if r.event == name]


def test_number_only_wristband_is_confirmed_from_the_record(
    page: Page, station: Station, fhir: FhirServer
) -> None:
    station.clear_share()
    sign_in_with_pin(page)
    station.show("wristband-datamatrix")
    expect(page.get_by_test_id("confirm-mrn")).to_have_text(BAND_MRN, timeout=10_000)
    expect(page.get_by_test_id("record-name")).to_have_text(NAME)  # the official name, not the usual one
    expect(page.get_by_test_id("record-dob")).to_have_text(DOB)
    expect(page.get_by_test_id("record-question")).to_have_text(
        "Ask the patient their date of birth. Does it match?"
    )
    expect(page.get_by_test_id("type-dob")).to_have_count(0)  # a record is confirmed, not replaced
    request = fhir.requests[-1]
    assert request["path"].startswith("/Patient?") and f"{BAND_MRN}" in request["path"]
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    page.get_by_test_id("record-yes").click()

    verbal_consent(page)
    expect(page.get_by_test_id("patient-banner")).to_contain_text(NAME)
    choose_site(page, "front-lower-leg-b")
    take_photos(page, 1)
    send(page)
    patient = report_json(station.wait_for_report())["patient"]
    assert patient["mrn"] == BAND_MRN and patient["name"] == NAME and patient["birth_date"] == DOB
    assert patient["id_source"] == "barcode" and patient["barcode_format"] == "DataMatrix"
    assert patient["confirmed_by"] == "birth_date" and patient["confirmed_from"] == "fhir"
    assert {"outcome": "found"} in [{"outcome": e.get("outcome")} for e in _events(station, "patient-lookup")]
    confirmed = _events(station, "patient-confirmed")[-1]
    assert confirmed["confirmed_from"] == "fhir" and BAND_MRN not in str(confirmed)


def test_patient_says_no_goes_back_to_scanning(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    station.show("wristband-datamatrix")
    expect(page.get_by_test_id("record-dob")).to_have_text(DOB, timeout=10_000)
    station.show("empty")
    page.get_by_test_id("record-no").click()
    expect(page).to_have_url(re.compile(r"/patient\?error=1$"))
    expect(page.get_by_test_id("error")).to_contain_text("Identity not confirmed")
    session = station.runtime.sessions.current
    assert session is not None and session.patient is None and session.pending is None


def test_no_match_says_so_and_the_nurse_types_the_date(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill("MRN0077777")
    page.get_by_test_id("mrn-submit").click()
    expect(page.get_by_test_id("lookup-message")).to_have_text(
        "No patient with this number in the hospital record. Check the number."
        " Ask the patient and type their date of birth or name."
    )
    expect(page.get_by_test_id("lookup-retry")).to_have_count(0)  # an answer, not an outage
    page.get_by_test_id("type-dob").click()
    page.get_by_test_id("dob-day").fill("30")
    page.get_by_test_id("dob-month").fill("06")
    page.get_by_test_id("dob-year").fill("1975")
    page.get_by_test_id("dob-submit").click()
    expect(page.get_by_test_id("who-patient")).to_be_visible()
    patient = station.runtime.sessions.current.patient
    assert patient.mrn == "MRN0077777" and patient.birth_date.isoformat() == "1975-06-30"
    assert patient.confirmed_by == "birth_date" and patient.confirmed_from == "typed"


def test_several_matches_say_check_the_wristband(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill("MRN0066666")
    page.get_by_test_id("mrn-submit").click()
    expect(page.get_by_test_id("lookup-message")).to_contain_text(
        "Several patients match this number: check the wristband."
    )
    expect(page.get_by_test_id("record-dob")).to_have_count(0)
    expect(page.get_by_test_id("type-name")).to_be_visible()


def test_server_down_falls_back_to_typing(page: Page, station: Station) -> None:
    config = station.runtime.config
    working = config.patient_lookup
    assert working is not None
    config.patient_lookup = working.model_copy(update={"fhir_base_url": f"http://127.0.0.1:{free_port()}"})
    try:
        sign_in_with_pin(page)
        station.show("wristband-datamatrix")
        expect(page.get_by_test_id("lookup-message")).to_have_text(
            "The hospital record did not answer. Ask the patient and type their date of birth or name.",
            timeout=10_000,
        )
        station.show("empty")
        expect(page.get_by_test_id("lookup-retry")).to_be_visible()
        page.get_by_test_id("lookup-retry").click()  # still down: the same message, nothing stuck
        expect(page.get_by_test_id("lookup-message")).to_contain_text("did not answer")
        config.patient_lookup = working  # the server is back: Try again finds the record
        page.get_by_test_id("lookup-retry").click()
        expect(page.get_by_test_id("record-dob")).to_have_text(DOB)
        config.patient_lookup = working.model_copy(
            update={"fhir_base_url": f"http://127.0.0.1:{free_port()}"}
        )
        page.get_by_test_id("record-no").click()  # start again, with the server down for good
        station.show("wristband-datamatrix")
        expect(page.get_by_test_id("lookup-message")).to_contain_text("did not answer", timeout=10_000)
        station.show("empty")
        page.get_by_test_id("type-name").click()
        page.get_by_test_id("typed-name").fill("Jamie Rivera")
        page.get_by_test_id("osk").locator('button[data-key="Enter"]').click()  # OK on the keyboard
        expect(page.get_by_test_id("who-patient")).to_be_visible()
        patient = station.runtime.sessions.current.patient
        assert patient.confirmed_by == "name" and patient.confirmed_from == "typed"
        outcomes = [e.get("outcome") for e in _events(station, "patient-lookup")]
        assert outcomes[-3:] == ["unreachable", "found", "unreachable"]
    finally:
        config.patient_lookup = working
