"""The "rclone" destination against real servers: `rclone serve webdav` (HTTPS) and `rclone serve sftp`."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from kiosk.destinations import registry
from kiosk.destinations.base import DeliveryError
from kiosk.destinations.rclone import RcloneConfig, RcloneDestination, upload_order
from kiosk.outbox import sender
from kiosk.outbox.store import Outbox
from tests.destinations.conftest import (
    PATIENT_MRN,
    PATIENT_NAME,
    SealedParcel,
    TlsFiles,
    enqueue,
    free_port,
    sealed_parcel,
    wait_for_port,
)

RCLONE = shutil.which("rclone") or "rclone"  # installed by scripts/setup-system.sh
USER, PASSWORD = "kiosk", "rclone-pw-8e2a61"
DAY = "2024-05-06"  # tests.factories.CREATED_AT, in UTC


def _obscure(password: str) -> str:
    return subprocess.run(
        [RCLONE, "obscure", password], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass
class Served:
    """An rclone server process and the directory it serves."""

    process: subprocess.Popen[bytes]
    root: Path
    port: int

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def report_files(self, made: SealedParcel, top: str = "PicSafe") -> dict[str, bytes]:
        folder = self.root / top / DAY / made.report_id
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@dataclass
class Setup:
    folder: Path
    host_key: Path
    host_public_key: str
    known_hosts: Path
    empty_config: Path
    tls: TlsFiles


def _serve(setup: Setup, kind: str, root: Path, port: int | None = None) -> Served:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    command = [RCLONE, "serve", kind, "--config", str(setup.empty_config), "--addr", f"127.0.0.1:{port}"]
    command += ["--user", USER, "--pass", PASSWORD]
    if kind == "webdav":
        command += ["--cert", str(setup.tls.cert_file), "--key", str(setup.tls.key_file)]
    else:
        command += ["--key", str(setup.host_key)]
        with setup.known_hosts.open("a") as known:
            known.write(f"[127.0.0.1]:{port} {setup.host_public_key}\n")
    log = (setup.folder / f"{kind}-{port}.log").open("wb")
    process = subprocess.Popen([*command, str(root)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except OSError:
        process.kill()
        raise
    return Served(process, root, port)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tls_ca: TlsFiles) -> Setup:
    folder = tmp_path_factory.mktemp("rclone")
    key = Ed25519PrivateKey.generate()
    host_key = folder / "host_key"
    host_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    host_key.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("")  # _serve adds "[127.0.0.1]:port key" for each SFTP server
    empty = folder / "serve.conf"
    empty.write_text("")
    return Setup(folder, host_key, public.decode(), known_hosts, empty, tls_ca)


@pytest.fixture(scope="module")
def webdav(setup: Setup) -> Iterator[Served]:
    served = _serve(setup, "webdav", setup.folder / "webdav-root")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def sftp(setup: Setup) -> Iterator[Served]:
    served = _serve(setup, "sftp", setup.folder / "sftp-root")
    yield served
    served.stop()


def _remote(kind: str, port: int, password: str = PASSWORD, setup: Setup | None = None) -> str:
    if kind == "webdav":
        lines = ["type = webdav", f"url = https://127.0.0.1:{port}/", "vendor = other"]
    else:
        assert setup is not None
        lines = [
            "type = sftp",
            "host = 127.0.0.1",
            f"port = {port}",
            f"known_hosts_file = {setup.known_hosts}",
        ]
    return "\n".join([*lines, f"user = {USER}", f"pass = {_obscure(password)}"])


def _rclone_config(directory: Path, remotes: dict[str, str]) -> Path:
    """The file an admin writes with `rclone config`: one section per remote, 0600."""
    path = directory / "rclone.conf"
    path.write_text("".join(f"[{name}]\n{body}\n\n" for name, body in remotes.items()))
    path.chmod(0o600)
    return path


def _destination(setup: Setup, made: SealedParcel, config_file: Path, remote: str, **settings: Any):
    fields: dict[str, Any] = {
        "name": "clinic cloud",
        "type": "rclone",
        "remote": f"{remote}:",
        "rclone_config": config_file,
        "rclone_binary": RCLONE,
        "extra_flags": ["--ca-cert", str(setup.tls.ca_file)],  # the webdav server's private CA
        "encryption": "passphrase",
        "passphrase_file": made.passphrase_file,
    }
    destination = registry.build(RcloneConfig.model_validate(fields | settings))
    assert isinstance(destination, RcloneDestination)
    return destination


def _ram_dirs() -> set[Path]:
    return {p for place in (Path("/run/kiosk"), Path("/dev/shm")) for p in place.glob("kiosk-rclone-*")}


@pytest.mark.parametrize("kind", ["webdav", "sftp"])
def test_the_report_lands_byte_for_byte_in_its_dated_folder_once(
    request: pytest.FixtureRequest, setup: Setup, tmp_path: Path, kind: str
) -> None:
    served: Served = request.getfixturevalue(kind)
    made = sealed_parcel(tmp_path, "passphrase")
    config_file = _rclone_config(tmp_path, {"clinic": _remote(kind, served.port, setup=setup)})
    destination = _destination(setup, made, config_file, "clinic")
    ram_before = _ram_dirs()

    receipt = destination.deliver(made.parcel)

    assert served.report_files(made) == made.entries
    assert set(made.entries) >= {"report.json", "report.xml", "report.pdf", "photos/photo-01.jpg"}
    assert receipt.startswith(f"clinic:PicSafe/{DAY}/{made.report_id}/ {len(made.entries)} files")
    assert "verified" in receipt and "photos/photo-01.jpg" in receipt
    assert PATIENT_MRN not in receipt and PATIENT_NAME not in receipt
    assert _ram_dirs() == ram_before, "the RAM staging directory is removed"

    # Delivered again (the outbox retried after a crash): the same files, no second copy anywhere.
    destination.deliver(made.parcel)
    assert served.report_files(made) == made.entries
    assert [p.name for p in (served.root / "PicSafe" / DAY).iterdir()].count(made.report_id) == 1


def test_root_folder_and_time_zone_shape_the_path(setup: Setup, webdav: Served, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "passphrase")
    config_file = _rclone_config(tmp_path, {"clinic": _remote("webdav", webdav.port)})
    destination = _destination(
        setup, made, config_file, "clinic", root="/Wound Clinic/PicSafe/", date_timezone="Pacific/Auckland"
    )
    destination.deliver(made.parcel)
    # 07:08 UTC is 19:08 the same day in Auckland (NZST); a report at 20:00 UTC would be the next day.
    assert webdav.report_files(made, top="Wound Clinic/PicSafe") == made.entries
    late = made.parcel.header.model_copy(update={"created_at": "2024-05-06T20:00:00Z"})
    assert destination.folder(late) == f"clinic:Wound Clinic/PicSafe/2024-05-07/{made.report_id}"


def test_report_json_is_uploaded_last() -> None:
    names = ["report.json", "photos/photo-02.jpg", "report.pdf", "consent/signature.png", "report.xml"]
    assert upload_order(names)[-1] == "report.json"


@pytest.mark.parametrize("kind", ["webdav", "sftp"])
def test_a_wrong_password_is_permanent(
    request: pytest.FixtureRequest, setup: Setup, tmp_path: Path, kind: str
) -> None:
    served: Served = request.getfixturevalue(kind)
    made = sealed_parcel(tmp_path, "passphrase")
    config_file = _rclone_config(tmp_path, {"clinic": _remote(kind, served.port, "wrong-pw", setup)})
    with pytest.raises(DeliveryError, match=r"upload .* failed") as caught:
        _destination(setup, made, config_file, "clinic").deliver(made.parcel)
    assert caught.value.permanent
    assert PASSWORD not in str(caught.value)
    assert not (served.root / "PicSafe" / DAY / made.report_id).exists()


def test_a_server_that_is_down_is_transient(setup: Setup, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "passphrase")
    config_file = _rclone_config(tmp_path, {"clinic": _remote("webdav", free_port())})
    with pytest.raises(DeliveryError, match="connection refused") as caught:
        _destination(setup, made, config_file, "clinic").deliver(made.parcel)
    assert not caught.value.permanent


@pytest.mark.parametrize("problem", ["missing config", "readable config", "unknown remote", "no rclone"])
def test_setup_problems_need_a_person(setup: Setup, webdav: Served, tmp_path: Path, problem: str) -> None:
    made = sealed_parcel(tmp_path, "passphrase")
    config_file = _rclone_config(tmp_path, {"clinic": _remote("webdav", webdav.port)})
    settings: dict[str, Any] = {}
    if problem == "missing config":
        config_file.unlink()
    elif problem == "readable config":
        config_file.chmod(0o644)
    else:
        settings["rclone_binary"] = str(tmp_path / "no-such-rclone")
    remote = "elsewhere" if problem == "unknown remote" else "clinic"
    with pytest.raises(DeliveryError) as caught:
        _destination(setup, made, config_file, remote, **settings).deliver(made.parcel)
    assert caught.value.permanent, str(caught.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"remote": "clinicbox"}, "should match pattern"),
        ({"remote": "clinicbox:PicSafe"}, "should match pattern"),
        ({"root": "PicSafe/../etc"}, "plain folder path"),
        ({"extra_flags": ["--config", "/tmp/other.conf"]}, "set by the station"),
        ({"extra_flags": ["--streaming-upload-cutoff=1G"]}, "set by the station"),
        ({"extra_flags": ["copy", "/"]}, "must start with a flag"),
        ({"date_timezone": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_configuration_rules(settings: dict[str, Any], message: str) -> None:
    fields = {"name": "cloud", "type": "rclone", "remote": "clinicbox:", "encryption": "passphrase"}
    fields["passphrase_file"] = "/etc/kiosk/cloud.key"
    with pytest.raises(ValidationError, match=message):
        RcloneConfig.model_validate(fields | settings)


def test_down_then_back_is_delivered_exactly_once_through_the_outbox(
    outbox: Outbox, setup: Setup, tmp_path: Path
) -> None:
    port = free_port()
    made = sealed_parcel(tmp_path, "passphrase")
    config_file = _rclone_config(tmp_path, {"clinic": _remote("sftp", port, setup=setup)})
    destinations = {"clinic cloud": _destination(setup, made, config_file, "clinic")}
    path = enqueue(outbox, made, "clinic cloud")

    assert not sender.drain(outbox, destinations, timeout=0)
    (waiting,) = outbox.deliveries()
    assert waiting.state == "pending" and "connection refused" in (waiting.last_error or "")

    served = _serve(setup, "sftp", tmp_path / "late-root", port=port)
    try:
        assert outbox.retry(made.report_id) == 1
        assert sender.drain(outbox, destinations, timeout=30)
        (done,) = outbox.deliveries()
        assert done.state == "delivered" and "verified" in (done.receipt or "")
        assert served.report_files(made) == made.entries
        assert [p.name for p in (served.root / "PicSafe" / DAY).iterdir()] == [made.report_id]
    finally:
        served.stop()
    assert not path.exists()
