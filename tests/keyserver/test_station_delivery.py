"""The station's plaintext destinations and the key server: delivery unwrap, refusal, outage.

FHIR, DICOMweb, rclone and plaintext HTTPS open envelope-sealed reports with a key the key server releases
for delivery (audited); a refusal needs a person, an outage is retried (runs on both databases).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiosk.destinations.base import DeliveryError, Parcel
from kiosk.destinations.plaintext import bundle_opener
from kiosk.keyserver_client import StationClient
from kiosk.report.bundle import write_bundle
from kiosk.sealing.sealed_file import EnvelopeSealer, write_sealed
from tests.factories import sample_report

from .conftest import KeyServer
from .pg import free_port


def _sealed_report(client: StationClient, directory: Path, station_id: str) -> Parcel:
    report = sample_report(photo_count=2)
    path = directory / f"{report.report_id}.cpseal"
    with path.open("wb") as out:
        header = write_sealed(
            out,
            lambda sink: write_bundle(report, sink),
            EnvelopeSealer(client.fetch_public_keys()[0]),
            report_id=report.report_id,
            station_id=station_id,
            created_at="2026-11-22T10:00:00Z",
            recipients=["wound-team"],
        )
    return Parcel(report.report_id, path, header)


def test_delivery_unwrap_opens_the_report_and_is_audited(ks: KeyServer, tmp_path: Path) -> None:
    client = StationClient(ks.url, ks.enroll("ward-9"), "ward-9")
    parcel = _sealed_report(client, tmp_path, "ward-9")
    client.register_report(parcel.header)

    entries = bundle_opener(passphrase_file=None, unwrap=client.delivery_unwrap)(parcel)

    expected = sample_report(photo_count=2)
    report = json.loads(entries["report.json"])
    assert report["patient"]["mrn"] == expected.patient.mrn
    assert entries["photos/photo-01.jpg"] == expected.photos[0].jpeg
    assert entries["report.pdf"].startswith(b"%PDF-")
    ks.add_user("auditor-1", role="auditor")
    records = ks.get(f"/v1/audit?report_id={parcel.report_id}", who="auditor-1").json()["records"]
    releases = [r for r in records if r["actor"] == "station:ward-9" and r["outcome"] == "released"]
    assert releases, f"no audited delivery release in {records}"


def test_another_station_is_refused_and_the_delivery_needs_a_person(ks: KeyServer, tmp_path: Path) -> None:
    sealer = StationClient(ks.url, ks.enroll("ward-9"), "ward-9")
    parcel = _sealed_report(sealer, tmp_path, "ward-9")
    sealer.register_report(parcel.header)
    intruder = StationClient(ks.url, ks.enroll("ward-10"), "ward-10")
    with pytest.raises(DeliveryError) as refused:
        bundle_opener(passphrase_file=None, unwrap=intruder.delivery_unwrap)(parcel)
    assert refused.value.permanent
    assert "403" in str(refused.value)


def test_an_unreachable_key_server_makes_the_delivery_wait(ks: KeyServer, tmp_path: Path) -> None:
    client = StationClient(ks.url, ks.enroll("ward-9"), "ward-9")
    parcel = _sealed_report(client, tmp_path, "ward-9")
    offline = StationClient(f"http://127.0.0.1:{free_port()}", client.token, "ward-9")
    with pytest.raises(DeliveryError) as waiting:
        bundle_opener(passphrase_file=None, unwrap=offline.delivery_unwrap)(parcel)
    assert not waiting.value.permanent
    assert "cannot reach the key server" in str(waiting.value)
