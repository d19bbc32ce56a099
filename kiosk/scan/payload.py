"""Turn a decoded payload into identity fields: {mrn, issuer, name, dob} for a patient, {staff_id, name} for
staff.

Order: configured `[[scan_rule]]`s first (the site knows its wristbands best), then GS1 element strings
(AI 8018 GSRN = a service recipient, i.e. patient; AI 8017 GSRN = a service provider, i.e. staff) parsed by
biip, then HL7-like PID segments, then key=value lists, then a plain identifier. Where a format has a check
digit it is verified, and a payload that fails it yields nothing: a mis-keyed MRN must never select the
wrong patient.

`Identity` keeps its fields out of repr() so that patient data cannot reach a log by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

import biip
from biip.checksums import gs1_standard_check_digit
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GS = "\x1d"
PATIENT_KEYS = ("mrn", "issuer", "name", "dob")
STAFF_KEYS = ("staff_id", "name")
_KEY_ALIASES = {
    "mrn": "mrn", "id": "mrn", "pid": "mrn", "patientid": "mrn", "patient_id": "mrn", "hospno": "mrn",
    "nhs": "mrn", "nhsno": "mrn", "urn": "mrn",
    "issuer": "issuer", "aa": "issuer", "org": "issuer", "facility": "issuer",
    "name": "name", "pn": "name", "patientname": "name", "fullname": "name",
    "dob": "dob", "birthdate": "dob", "dateofbirth": "dob", "bd": "dob",
    "staff": "staff_id", "staffid": "staff_id", "staff_id": "staff_id", "emp": "staff_id",
    "badge": "staff_id",
}  # fmt: skip
PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{3,19}")


class ScanRule(BaseModel):
    """`[[scan_rule]]` in kiosk.toml: a regex with named groups mrn/issuer/name/dob or staff_id/name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    kind: Literal["patient", "staff"] = "patient"
    pattern: str = Field(description="Python regex matched against the whole payload")
    formats: list[str] = Field(default_factory=list, description='e.g. ["Code 128"]; empty = any symbology')
    check: Literal["none", "nhs-mod11", "gs1-mod10"] = Field("none", description="check digit of the id")
    dob_format: str | None = Field(None, description="strptime format of the dob group, e.g. %d/%m/%Y")
    issuer: str | None = Field(None, description="fixed issuer when the payload does not carry one")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _has_id_group(self) -> ScanRule:
        groups = set(re.compile(self.pattern).groupindex)
        id_group = "mrn" if self.kind == "patient" else "staff_id"
        allowed = set(PATIENT_KEYS if self.kind == "patient" else STAFF_KEYS)
        if id_group not in groups:
            raise ValueError(f"pattern needs a named group (?P<{id_group}>...)")
        if extra := groups - allowed:
            raise ValueError(f"unknown group(s) {', '.join(sorted(extra))}; use {', '.join(sorted(allowed))}")
        return self


@dataclass(frozen=True)
class Identity:
    kind: Literal["patient", "staff"]
    source: str  # "rule:<name>", "gs1", "hl7", "key-value" or "plain": safe to log
    fields: dict[str, str] = field(repr=False)


def nhs_number_valid(number: str) -> bool:
    """NHS number: 10 digits, weights 10..2, check = 11 - (sum mod 11); 11 -> 0, 10 -> invalid."""
    digits = number.replace(" ", "").replace("-", "")
    if not re.fullmatch(r"\d{10}", digits):
        return False
    check = 11 - sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True)) % 11
    return check != 10 and (check % 11) == int(digits[9])


def gs1_mod10_valid(number: str) -> bool:
    return number.isdigit() and len(number) > 1 and gs1_standard_check_digit(number[:-1]) == int(number[-1])


def parse_payload(
    text: str,
    *,
    gs1: bool = False,
    symbology: str | None = None,
    rules: tuple[ScanRule, ...] | list[ScanRule] = (),
) -> Identity | None:
    """Identity fields from one payload, or None if nothing recognisable (or a check digit fails)."""
    text = text.strip().replace("<GS>", GS)  # keyboard-wedge scanners often spell GS out
    for rule in rules:
        if rule.formats and symbology not in rule.formats:
            continue
        found = _apply_rule(rule, text)
        if found is not False:  # a rule that matched decides, even when its check digit fails (None)
            return found
    if gs1 or text.startswith(("]C1", "]d2", "]Q3", "(80")) or re.match(r"^801[78]\d{18}", text):
        return _gs1(text, gs1)
    if re.search(r"(^|[\r\n])PID.", text):
        return _hl7(text)
    if "=" in text:
        return _key_value(text)
    if PLAIN_ID.fullmatch(text):
        return Identity("patient", "plain", {"mrn": text})
    return None


def _apply_rule(rule: ScanRule, text: str) -> Identity | Literal[False] | None:
    """False: the rule does not apply; None: it applies but the payload is invalid."""
    match = re.fullmatch(rule.pattern, text)
    if match is None:
        return False
    fields = {k: v.strip() for k, v in match.groupdict().items() if v}
    id_key = "mrn" if rule.kind == "patient" else "staff_id"
    ident = fields.get(id_key, "")
    if rule.check == "nhs-mod11" and not nhs_number_valid(ident):
        return None
    if rule.check == "gs1-mod10" and not gs1_mod10_valid(ident):
        return None
    if rule.check == "nhs-mod11":
        fields[id_key] = re.sub(r"[ -]", "", ident)
    if "dob" in fields:
        dob = _iso_date(fields["dob"], rule.dob_format)
        if dob is None:
            return None
        fields["dob"] = dob
    if rule.issuer and rule.kind == "patient":
        fields.setdefault("issuer", rule.issuer)
    return Identity(rule.kind, f"rule:{rule.name}", fields)


def _gs1(text: str, gs1: bool) -> Identity | None:
    if text.startswith("("):
        value = text
        try:
            message = biip.gs1_messages.GS1Message.parse_hri(value)
        except biip.ParseError:
            return None
    else:
        try:
            message = biip.gs1_messages.GS1Message.parse(text[3:] if text.startswith("]") else text)
        except biip.ParseError:
            return None
    for element in message.element_strings:
        ai = element.ai.ai
        if ai in ("8017", "8018"):
            if not gs1_mod10_valid(element.value):
                return None
            if ai == "8018":
                return Identity("patient", "gs1", {"mrn": element.value, "issuer": "GS1 GSRN"})
            return Identity("staff", "gs1", {"staff_id": element.value})
    return None


def gs1_hri(text: str) -> str | None:
    """'(8018)7350…' for a raw GS1 element string, for display; None if it does not parse."""
    try:
        return biip.gs1_messages.GS1Message.parse(text).as_hri()
    except biip.ParseError:
        return None


def _hl7(text: str) -> Identity | None:
    for segment in re.split(r"[\r\n]+", text):
        if not segment.startswith("PID") or len(segment) < 4:
            continue
        sep = segment[3]  # HL7: the character after the segment name is the field separator
        parts = segment.split(sep)
        component = "^"
        ids = parts[3].split("~")[0].split(component) if len(parts) > 3 else []
        if not ids or not ids[0]:
            return None
        fields = {"mrn": ids[0]}
        if len(ids) > 3 and ids[3]:
            fields["issuer"] = ids[3].split("&")[0]
        if len(parts) > 5 and parts[5]:
            family, _, rest = parts[5].partition(component)
            given = rest.split(component)[0]
            fields["name"] = f"{family}, {given}" if given else family
        if len(parts) > 7 and parts[7]:
            dob = _iso_date(parts[7][:8], "%Y%m%d")
            if dob:
                fields["dob"] = dob
        return Identity("patient", "hl7", fields)
    return None


def _key_value(text: str) -> Identity | None:
    fields: dict[str, str] = {}
    for item in re.split(r"[;|&\r\n" + GS + "]+", text):
        key, eq, value = item.partition("=")
        target = _KEY_ALIASES.get(key.strip().lower().replace(" ", ""))
        if eq and target and value.strip():
            fields.setdefault(target, value.strip())
    if "dob" in fields:
        dob = _iso_date(fields["dob"], None)
        if dob is None:
            return None
        fields["dob"] = dob
    if "staff_id" in fields:
        return Identity("staff", "key-value", {k: v for k, v in fields.items() if k in STAFF_KEYS})
    if "mrn" in fields:
        return Identity("patient", "key-value", {k: v for k, v in fields.items() if k in PATIENT_KEYS})
    return None


def _iso_date(value: str, fmt: str | None) -> str | None:
    """ISO 8601 date, or None. Without a format only unambiguous forms (YYYY-MM-DD, YYYYMMDD) are accepted:
    03/04/1980 is a different day in London and New York, so sites say which they print via a rule."""
    formats = [fmt] if fmt else ["%Y-%m-%d", "%Y%m%d"]
    for f in formats:
        try:
            parsed = datetime.strptime(value.strip(), f).date()
        except ValueError:
            continue
        if date(1890, 1, 1) <= parsed <= date.today():
            return parsed.isoformat()
    return None
