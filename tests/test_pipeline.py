"""The pipeline end to end in process: hostile text in every field survives seal -> open exactly."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pytest

from kiosk import config as config_module
from kiosk.outbox.store import Outbox
from kiosk.pipeline import PhotoInput, SealError, assemble_report, seal_and_queue
from kiosk.report.bundle import read_bundle
from kiosk.report.document import xml_to_dict
from kiosk.report.model import BodySite, Patient, Staff, Station
from kiosk.sealing import passphrase
from kiosk.sealing.sealed_file import decrypt_payload, read_sealed
from tests.factories import folder_station_toml, make_jpeg, sample_consent

HOSTILE = [
    "<script>alert(1)</script>",
    "<font size=80>X</font> & \"quotes\" 'single'",
    "\u202eRIGHT-TO-LEFT OVERRIDE \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "emoji \U0001f9d1\u200d\u2695\ufe0f CJK \u60a3\u8005 combining e\u0301",
    "]]><!-- -->&amp;&#0;%PDF-1.7\nendstream endobj",
]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[config_module.Config, Path]:
    text, key_file = folder_station_toml(tmp_path)
    return config_module.parse(text, tmp_path / "kiosk.toml"), key_file


@pytest.mark.parametrize("text", [*HOSTILE, "x" * 1_000_000, "word " * 200_000], ids=range(7))
def test_hostile_text_survives_exactly(setup: tuple[config_module.Config, Path], text: str) -> None:
    config, key_file = setup
    report = assemble_report(
        station=Station(id="wound-clinic-1", software_version="0.1.0", device=text[:200]),
        staff=Staff(id="RN-1", name=text, role=text[:100]),
        patient=Patient(mrn=text[:64] or "x", issuer=text, name=text, birth_date=date(1950, 1, 2)),
        consent=sample_consent(consenter="guardian", consenter_name=text),
        photos=[
            PhotoInput(
                data=make_jpeg(320, 240),
                name="a.jpg",
                body_site=BodySite(code="40983000", display=text[:300]),
                notes=text,
            )
        ],
        notes=text,
    )
    outbox = Outbox(config.station.data_dir)
    try:
        headers = seal_and_queue(report, config.destination, config, outbox)
        (sealed_path,) = {d.sealed_path for d in outbox.deliveries()}
        assert sealed_path is not None
        with sealed_path.open("rb") as source:
            sealed = read_sealed(source)
            assert sealed.header == headers["share"]
            plaintext = io.BytesIO()
            decrypt_payload(source, sealed, plaintext, passphrase=passphrase.read_file(key_file))
    finally:
        outbox.close()
    entries = read_bundle(plaintext.getvalue())
    document = json.loads(entries["report.json"])
    assert document == xml_to_dict(entries["report.xml"])
    assert document["notes"] == text
    assert document["patient"]["name"] == text
    assert document["consent"]["consenter_name"] == text
    assert document["photos"][0]["notes"] == text
    assert entries["report.pdf"].startswith(b"%PDF-") and entries["report.pdf"].rstrip().endswith(b"%%EOF")


def test_control_characters_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError) as caught:
        Patient(mrn="1", name="bell\x07")
    assert "name" in str(caught.value)
    assert "control or invalid character (U+0007)" in str(caught.value)


def test_failed_seal_queues_nothing_and_leaves_nothing(setup: tuple[config_module.Config, Path]) -> None:
    config, key_file = setup
    key_file.chmod(0o644)  # world-readable: refused at seal time
    report = assemble_report(
        station=Station(id="wound-clinic-1", software_version="0.1.0"),
        staff=Staff(id="RN-1"),
        patient=Patient(mrn="MRN1"),
        consent=sample_consent(),
        photos=[PhotoInput(data=make_jpeg(320, 240), name="a.jpg")],
    )
    outbox = Outbox(config.station.data_dir)
    try:
        with pytest.raises(SealError, match="readable by everyone"):
            seal_and_queue(report, config.destination, config, outbox)
        assert outbox.deliveries() == []
        assert list(outbox.folder.iterdir()) == []
        key_file.chmod(0o600)  # the nurse's session was kept: the retry succeeds
        seal_and_queue(report, config.destination, config, outbox)
        assert len(outbox.deliveries()) == 1
    finally:
        outbox.close()
