"""The key server as a real process (`keyserver serve`, waitress, free 127.0.0.1 port) on both backends,
set up with the real CLI and driven by the station client: enroll → seal → register → inbox upload →
delivery unwrap → recipient inbox → `keyserver decrypt` round trip; tampered files are refused."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from kiosk import keyserver_client
from kiosk.sealing.sealed_file import EnvelopeSealer, write_sealed

from .conftest import PASSWORD, bundle_zip, new_database
from .pg import free_port

# The installed console script, next to this interpreter (falls back to `python -m keyserver`).
_SCRIPT = Path(sys.executable).parent / "keyserver"
KEYSERVER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keyserver"]


@dataclass
class Proc:
    url: str
    config: Path
    directory: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*KEYSERVER, "--config", str(self.config), *args], capture_output=True, text=True, timeout=60
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"keyserver serve exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("keyserver serve did not become ready")


@pytest.fixture
def proc(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Proc]:
    database_url = new_database(backend, request, tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "master.secret").write_text(uuid.uuid4().hex * 2)
    config = tmp_path / "keyserver.toml"
    config.write_text(
        f'data_dir = "data"\ndatabase_url = "{database_url}"\nmaster_secret_file = "master.secret"\n'
        f'allow_generated_master_secret = false\npublic_base_url = "{url}"\n'
    )
    p = Proc(url, config, tmp_path)
    p.cli("db", "upgrade")
    p.cli("kek", "rotate")
    process = subprocess.Popen(
        [*KEYSERVER, "--config", str(config), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(url, process)
        yield p
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_station_to_recipient_round_trip(proc: Proc, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    proc.cli(
        "user",
        "add",
        "nurse.lee",
        "--role",
        "clinician",
        "--email",
        "lee@clinic.example",
        "--password-file",
        str(tmp_path / "pw"),
    )
    proc.cli("token", "create", "nurse.lee", "--out", str(tmp_path / "token"))
    code = proc.cli("station", "enroll-code").stdout.strip()

    # Station side: enroll (credentials 0600), fetch keys, seal, register, upload.
    creds_path = tmp_path / "station" / "credentials.json"
    creds = keyserver_client.enroll(proc.url, code, "ward-3", credentials_path=creds_path)
    assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600
    assert creds["station_id"] == "ward-3" and creds["token"].startswith("kss_")
    with pytest.raises(keyserver_client.KeyServerError) as replay:
        keyserver_client.enroll(proc.url, code, "ward-4")
    assert replay.value.status == 403 and replay.value.reason == "code_reused"
    client = keyserver_client.StationClient.from_file(creds_path)
    keys = client.fetch_public_keys()
    photo = os.urandom(2048)
    sealed_path = tmp_path / "report.cpseal"
    with open(sealed_path, "wb") as out:
        header = write_sealed(
            out,
            lambda sink: sink.write(bundle_zip(photo)),
            EnvelopeSealer(keys[0]),
            report_id=str(uuid.uuid4()),
            station_id="ward-3",
            created_at="2026-01-02T03:04:05Z",
            recipients=["lee@clinic.example"],
        )
    assert client.register_report(header)["new"] is True
    receipt = client.upload_to_inbox(sealed_path)
    assert receipt["sha256"] == hashlib.sha256(sealed_path.read_bytes()).hexdigest()
    assert client.upload_to_inbox(sealed_path) == receipt  # idempotent
    with zipfile.ZipFile(sealed_path) as z:
        wrapped = __import__("json").loads(z.read("package.json"))["wrapped_key"]
    assert len(client.delivery_unwrap(header, wrapped)) == 64

    # Recipient side: the inbox lists it; `keyserver decrypt` opens it.
    token = (tmp_path / "token").read_text().strip()
    listing = requests.get(
        f"{proc.url}/v1/inbox", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    assert [r["report_id"] for r in listing["reports"]] == [header.report_id]
    downloaded = requests.get(
        f"{proc.url}/v1/inbox/{header.report_id}/file",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert downloaded.content == sealed_path.read_bytes()
    out_dir = tmp_path / "opened"
    result = subprocess.run(
        [
            *KEYSERVER,
            "decrypt",
            str(sealed_path),
            "--out",
            str(out_dir),
            "--url",
            proc.url,
            "--token-file",
            str(tmp_path / "token"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (out_dir / "photos" / "photo-01.jpg").read_bytes() == photo
    assert sorted(p.name for p in out_dir.rglob("*") if p.is_file()) == [
        "photo-01.jpg",
        "report.json",
        "report.pdf",
        "report.xml",
    ]

    # Tampered: a changed recipient list. Refused, nothing written, non-zero exit.
    tampered = tmp_path / "tampered.cpseal"
    _rewrite_header(
        sealed_path, tampered, b'"recipients":["lee@clinic.example"]', b'"recipients":["lee@clinic.examplf"]'
    )
    result = subprocess.run(
        [
            *KEYSERVER,
            "decrypt",
            str(tampered),
            "--out",
            str(tmp_path / "bad"),
            "--url",
            proc.url,
            "--token-file",
            str(tmp_path / "token"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refused" in result.stderr or "altered" in result.stderr
    assert not (tmp_path / "bad").exists()

    # The audit log tells the story, and its chain verifies.
    verify = proc.cli("audit", "verify")
    assert "audit chain intact" in verify.stdout
    csv_text = proc.cli("audit", "export", "--format", "csv").stdout
    actions = [line.split(",")[3] for line in csv_text.splitlines()[1:]]
    for action in (
        "kek.rotate",
        "user.add",
        "token.create",
        "station.enroll_code",
        "station.enroll",
        "report.register",
        "inbox.upload",
        "key.delivery",
        "key.release",
    ):
        assert action in actions, action
    assert "denied" in csv_text  # the replayed code and the tampered header


def _rewrite_header(source: Path, target: Path, old: bytes, new: bytes) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "package.json":
                assert old in data
                data = data.replace(old, new)
            dst.writestr(info, data)


def test_cli_user_station_and_kek_commands(proc: Proc, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    proc.cli("user", "add", "root", "--role", "admin", "--password-file", str(tmp_path / "pw"))
    assert (
        "already exists"
        in proc.cli(
            "user", "add", "root", "--role", "admin", "--password-file", str(tmp_path / "pw"), check=False
        ).stderr
    )
    (tmp_path / "short").write_text("short")
    bad = proc.cli(
        "user", "add", "x", "--role", "admin", "--password-file", str(tmp_path / "short"), check=False
    )
    assert bad.returncode != 0 and "at least 12" in bad.stderr
    assert "root" in proc.cli("user", "list").stdout
    assert proc.cli("kek", "rotate", "--if-due").stdout.strip() == "rotation not due"
    proc.cli("kek", "rotate")
    listing = proc.cli("kek", "list").stdout.splitlines()
    assert [line.split()[1] for line in listing] == ["retired", "active"]
    refused = proc.cli("kek", "destroy", "1", "--yes", check=False)
    assert refused.returncode != 0 and "retention" in refused.stderr
    code = proc.cli("station", "enroll-code").stdout.strip()
    keyserver_client.enroll(proc.url, code, "ward-1")
    proc.cli("station", "disable", "ward-1")
    assert "disabled" in proc.cli("station", "list").stdout
    proc.cli("user", "disable", "root")
    assert "disabled" in proc.cli("user", "list").stdout
    assert proc.cli("inbox", "purge").stdout.startswith("0 expired")
