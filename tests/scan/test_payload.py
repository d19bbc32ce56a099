"""Payloads to identity fields: plain MRN, GS1 GSRN via biip (check digits), HL7 PID, key=value, rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kiosk.scan.payload import Identity, ScanRule, gs1_hri, nhs_number_valid, parse_payload
from kiosk.scan.wedge import WedgeDetector, classify


def fields(identity: Identity | None) -> dict[str, str] | None:
    return None if identity is None else {"kind": identity.kind, "source": identity.source, **identity.fields}


def test_plain_mrn() -> None:
    assert fields(parse_payload("MRN0012345")) == {"kind": "patient", "source": "plain", "mrn": "MRN0012345"}
    assert parse_payload("hi") is None  # too short to be an identifier
    assert parse_payload("some words with spaces") is None


@pytest.mark.parametrize(
    "payload,gs1",
    [
        ("8018735000000000123458", True),
        ("(8018)735000000000123458", False),
        ("]d28018735000000000123458", False),
    ],
)
def test_gs1_gsrn_recipient_is_a_patient(payload: str, gs1: bool) -> None:
    assert fields(parse_payload(payload, gs1=gs1)) == {
        "kind": "patient",
        "source": "gs1",
        "mrn": "735000000000123458",
        "issuer": "GS1 GSRN",
    }


def test_gs1_gsrn_provider_is_staff_and_other_ais_are_skipped() -> None:
    raw = "10ABC12\x1d8017735000000000987654"  # batch/lot first, then the GSRN
    assert fields(parse_payload(raw, gs1=True)) == {
        "kind": "staff",
        "source": "gs1",
        "staff_id": "735000000000987654",
    }
    assert gs1_hri(raw) == "(10)ABC12(8017)735000000000987654"


@pytest.mark.parametrize(
    "bad", ["8018735000000000123450", "8017735000000000987650", "(8018)735000000000123459"]
)
def test_gs1_wrong_check_digit_gives_nothing(bad: str) -> None:
    assert parse_payload(bad, gs1=True) is None


def test_gs1_without_a_gsrn_gives_nothing() -> None:
    assert parse_payload("0109506000134352", gs1=True) is None  # a GTIN: a product, not a person


def test_hl7_pid_segment() -> None:
    payload = "MSH|^~\\&|ADT|STMARY\rPID|1||MRN0012345^^^STMARY^MR~X9^^^OTHER||RIVERA^JAMIE^Q||19800101|F"
    assert fields(parse_payload(payload)) == {
        "kind": "patient",
        "source": "hl7",
        "mrn": "MRN0012345",
        "issuer": "STMARY",
        "name": "RIVERA, JAMIE",
        "dob": "1980-01-01",
    }


def test_key_value() -> None:
    assert fields(parse_payload("MRN=MRN0012345;NAME=Jamie Rivera;DOB=1980-01-01;WARD=7")) == {
        "kind": "patient",
        "source": "key-value",
        "mrn": "MRN0012345",
        "name": "Jamie Rivera",
        "dob": "1980-01-01",
    }
    assert fields(parse_payload("STAFF=N4711|NAME=A. Nurse")) == {
        "kind": "staff",
        "source": "key-value",
        "staff_id": "N4711",
        "name": "A. Nurse",
    }
    assert parse_payload("MRN=1;DOB=03/04/1980") is None  # ambiguous date: refuse rather than guess
    assert parse_payload("WARD=7;BED=12") is None


def test_nhs_number_mod11() -> None:
    assert nhs_number_valid("943 476 5919")
    assert not nhs_number_valid("9434765918")
    assert not nhs_number_valid("94347659")


NHS_RULE = ScanRule(
    name="nhs-band",
    pattern=r"(?P<mrn>\d{3} ?\d{3} ?\d{4})\|(?P<name>[^|]+)\|(?P<dob>\d\d/\d\d/\d{4})",
    check="nhs-mod11",
    dob_format="%d/%m/%Y",
    issuer="NHS",
)


def test_regex_rule_with_check_digit_and_date_format() -> None:
    assert fields(parse_payload("943 476 5919|Jamie Rivera|03/04/1980", rules=[NHS_RULE])) == {
        "kind": "patient",
        "source": "rule:nhs-band",
        "mrn": "9434765919",
        "name": "Jamie Rivera",
        "dob": "1980-04-03",
        "issuer": "NHS",
    }
    # a matching payload with a bad check digit is refused, not passed on to the other parsers
    assert parse_payload("9434765918|Jamie Rivera|03/04/1980", rules=[NHS_RULE]) is None


def test_rule_limited_to_a_symbology_and_staff_rules() -> None:
    rule = ScanRule(name="badge", kind="staff", pattern=r"EMP(?P<staff_id>\d{5})", formats=["Code 128"])
    assert fields(parse_payload("EMP12345", symbology="Code 128", rules=[rule]))["kind"] == "staff"
    assert fields(parse_payload("EMP12345", symbology="QR Code", rules=[rule]))["source"] == "plain"


def test_rule_validation() -> None:
    with pytest.raises(ValidationError, match=r"needs a named group \(\?P<mrn>"):
        ScanRule(name="x", pattern=r"(?P<name>.+)")
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        ScanRule(name="x", pattern=r"(?P<mrn>[)")
    with pytest.raises(ValidationError, match="unknown group"):
        ScanRule(name="x", pattern=r"(?P<mrn>\d+)(?P<ward>\d)")
    assert "fields" not in repr(parse_payload("MRN0012345"))


def keys(text: str, gap: float, start: float = 0.0) -> list[tuple[str, float]]:
    return [(ch, start + i * gap) for i, ch in enumerate([*text, "Enter"])]


def test_wedge_scanner_versus_typing() -> None:
    assert classify(keys("MRN0012345", 0.004)) == "scanner"
    assert classify(keys("MRN0012345", 0.12)) == "typing"
    assert classify(keys("MRN", 0.004)) == "typing"  # too short to be a wristband
    detector = WedgeDetector()
    for key, at in keys("ab", 0.3):  # someone typed, then the scanner fired
        detector.feed(key, at)
    result = None
    for key, at in keys("8018735000000000123458", 0.003, start=5.0):
        result = detector.feed(key, at) or result
    assert result is not None and result.identity is not None
    assert result.identity.fields["mrn"] == "735000000000123458"
    assert "735000000000123458" not in repr(result)
