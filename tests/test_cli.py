"""`kiosk send`, `kiosk report inspect|open`: the CLI pipeline end to end, as a real process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiosk import keyring
from kiosk.report.bundle import read_bundle
from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import decrypt_payload, read_sealed
from tests.factories import make_jpeg

MRN = "MRN-CLI-4242"
NAME = "Zoë <b>O'Brien</b> \u202eevil"


@pytest.fixture
def station(tmp_path: Path) -> dict[str, Path]:
    """A station config with a passphrase share, an envelope share and an unmounted USB disk."""
    for folder in ("share", "vault"):
        (tmp_path / folder).mkdir()
    (tmp_path / "tmp").mkdir()
    key_file = tmp_path / "share.key"
    subprocess.run([*_kiosk(), "passphrase", "new", str(key_file)], check=True, capture_output=True)
    private = envelope.generate_kek()
    data_dir = tmp_path / "data"
    keyring.save(
        data_dir / "keyserver-keys.json",
        [envelope.PublicKek(version=1, key=private.public_key(), key_server_url="https://keys.test")],
        current_version=1,
    )
    config = tmp_path / "kiosk.toml"
    config.write_text(
        f"""
[station]
id = "wound-clinic-1"
data_dir = "{data_dir}"

[keyserver]
url = "https://keys.test"

[[destination]]
name = "share"
type = "folder"
path = "{tmp_path / "share"}"
encryption = "passphrase"
passphrase_file = "{key_file}"

[[destination]]
name = "vault"
type = "folder"
path = "{tmp_path / "vault"}"
recipients = ["wound-team"]

[[destination]]
name = "usb"
type = "folder"
path = "{tmp_path / "usb"}"
"""
    )
    photo = tmp_path / "wound.jpg"
    photo.write_bytes(make_jpeg(800, 600, seed=7))
    return {
        "root": tmp_path,
        "config": config,
        "key": key_file,
        "photo": photo,
        "data": data_dir,
        "kek": private,
    }  # type: ignore[dict-item]


def _kiosk() -> list[str]:
    return [sys.executable, "-m", "kiosk.cli"]


def run(station: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(station["root"] / "tmp"), "KIOSK_CONFIG": str(station["config"])}
    return subprocess.run([*_kiosk(), *args], capture_output=True, text=True, env=env, timeout=120)


def send(
    station: dict[str, Path], *extra: str, destination: str = "share"
) -> subprocess.CompletedProcess[str]:
    return run(
        station,
        "send",
        "--patient-id",
        MRN,
        "--patient-name",
        NAME,
        "--birth-date",
        "1950-01-02",
        "--consent-method",
        "verbal",
        "--purpose",
        "clinical_care",
        "--purpose",
        "medical_record",
        "--photo",
        str(station["photo"]),
        "--site",
        "40983000:Skin of lower leg:left:front",
        "--destination",
        destination,
        "--json",
        *extra,
    )


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def test_send_seal_deliver_and_open_with_passphrase(station: dict[str, Path]) -> None:
    result = send(station)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    report_id = outcome["report_id"]
    assert outcome["deliveries"]["share"]["state"] == "delivered"
    sealed = station["root"] / "share" / f"{report_id}.cpseal"

    inspected = run(station, "report", "inspect", str(sealed))
    assert inspected.returncode == 0
    assert json.loads(inspected.stdout)["report_id"] == report_id
    assert MRN not in inspected.stdout and "O'Brien" not in inspected.stdout

    out = station["root"] / "opened"
    opened = run(
        station, "report", "open", str(sealed), "--passphrase-file", str(station["key"]), "--out", str(out)
    )
    assert opened.returncode == 0, opened.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["patient"]["mrn"] == MRN
    assert report["patient"]["name"] == NAME
    assert report["consent"]["method"] == "verbal"
    assert report["consent"]["witness_staff_id"] == "cli"
    assert report["photos"][0]["body_site"]["code"] == "40983000"
    photo = (out / "photos" / "photo-01.jpg").read_bytes()
    assert np.array_equal(_pixels(photo), _pixels(station["photo"].read_bytes()))
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF-")
    assert b"urn:clinical-photo-kiosk:report:1" in (out / "report.xml").read_bytes()


def test_nothing_plaintext_is_left_on_the_station(station: dict[str, Path]) -> None:
    result = send(station, destination="vault")
    assert result.returncode == 0, result.stderr
    assert list((station["data"] / "outbox").iterdir()) == [], "the wipe removes the sealed file"
    needles = [MRN.encode(), b"O'Brien", station["photo"].read_bytes()[-2000:-1000]]
    scanned = 0
    for path in station["root"].rglob("*"):
        if path.is_file() and path != station["photo"]:
            data = path.read_bytes()
            scanned += 1
            for needle in needles:
                assert needle not in data, f"plaintext patient data found in {path}"
    assert scanned >= 4  # config, keys, key file, sealed report, outbox database


def test_envelope_report_opens_only_with_the_key_servers_private_key(station: dict[str, Path]) -> None:
    result = send(station, destination="vault")
    assert result.returncode == 0, result.stderr
    report_id = json.loads(result.stdout)["report_id"]
    sealed_path = station["root"] / "vault" / f"{report_id}.cpseal"

    refused = run(
        station, "report", "open", str(sealed_path), "--passphrase-file", str(station["key"]), "--out", "x"
    )
    assert refused.returncode == 1
    assert "sealed to the key server" in refused.stderr

    with sealed_path.open("rb") as source:
        sealed = read_sealed(source)
        assert sealed.header.recipients == ["wound-team"]
        data_key = envelope.unwrap(sealed.wrapped_key or b"", sealed.header.as_dict(), station["kek"])  # type: ignore[arg-type]
        plaintext = io.BytesIO()
        decrypt_payload(source, sealed, plaintext, data_key=data_key)
    entries = read_bundle(plaintext.getvalue())
    assert json.loads(entries["report.json"])["patient"]["mrn"] == MRN


def test_tampered_report_is_refused_and_nothing_is_written(station: dict[str, Path]) -> None:
    report_id = json.loads(send(station).stdout)["report_id"]
    sealed = station["root"] / "share" / f"{report_id}.cpseal"
    data = bytearray(sealed.read_bytes())
    for offset in (len(data) // 3, len(data) // 2, len(data) - 200):
        damaged = bytearray(data)
        damaged[offset] ^= 0x40
        sealed.write_bytes(bytes(damaged))
        out = station["root"] / f"opened-{offset}"
        result = run(
            station,
            "report",
            "open",
            str(sealed),
            "--passphrase-file",
            str(station["key"]),
            "--out",
            str(out),
        )
        assert result.returncode == 1
        assert "Error:" in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()
    sealed.write_bytes(bytes(data[: len(data) // 2]))
    result = run(
        station, "report", "open", str(sealed), "--passphrase-file", str(station["key"]), "--out", "y"
    )
    assert result.returncode == 1
    assert not (station["root"] / "y").exists()


def test_unmounted_destination_is_queued_with_exit_code_3(station: dict[str, Path]) -> None:
    result = send(station, "--wait", "0", destination="usb")
    assert result.returncode == 3, result.stderr
    report_id = json.loads(result.stdout)["report_id"]
    listing = run(station, "outbox", "list")
    assert report_id in listing.stdout and "not available" in listing.stdout
    assert len(list((station["data"] / "outbox").iterdir())) == 1


@pytest.mark.parametrize(
    ("photo", "message"),
    [("missing.jpg", "cannot read photo"), ("notes.txt", "is not a JPEG image")],
)
def test_bad_photos_are_named_and_nothing_is_queued(
    station: dict[str, Path], photo: str, message: str
) -> None:
    (station["root"] / "notes.txt").write_text("not a photo")
    station["photo"] = station["root"] / photo
    result = send(station)
    assert result.returncode == 1
    assert message in result.stderr and photo in result.stderr
    assert not (station["data"] / "outbox").exists() or list((station["data"] / "outbox").iterdir()) == []


def test_weak_passphrase_file_is_refused(station: dict[str, Path]) -> None:
    station["key"].write_text("password123\n")
    result = send(station)
    assert result.returncode == 1
    assert "too weak" in result.stderr


def test_invalid_input_is_explained(station: dict[str, Path]) -> None:
    result = send(station, "--consent-method", "clinical_necessity")
    assert result.returncode == 1
    assert "clinical necessity needs a reason" in result.stderr
    unknown = send(station, destination="fax")
    assert unknown.returncode == 1 and "no destination named 'fax'" in unknown.stderr


def test_not_enrolled_station_says_so(station: dict[str, Path]) -> None:
    (station["data"] / "keyserver-keys.json").unlink()
    result = send(station, destination="vault")
    assert result.returncode == 1
    assert "not enrolled" in result.stderr
