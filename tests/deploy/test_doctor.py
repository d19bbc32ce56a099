"""`kiosk doctor` against real things: a real key server process, the real /proc of this machine, a real
folder, a mock camera (the only stand-in), and the CLI's JSON output and exit codes."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from kiosk import checks, doctor, doctor_host
from kiosk import config as kiosk_config
from kiosk.cli import main as kiosk_main
from kiosk.outbox.store import Outbox
from tests.keyserver.pg import free_port
from tests.test_outbox import _seal_into

BIN = Path(sys.executable).parent
KEYSERVER = [str(BIN / "keyserver")] if (BIN / "keyserver").exists() else [sys.executable, "-m", "keyserver"]
KIOSK = [str(BIN / "kiosk")] if (BIN / "kiosk").exists() else [sys.executable, "-m", "kiosk.cli"]
STATUSES = {"pass", "warn", "fail", "skip"}


class KeyServerProcess:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "master.secret").write_text(uuid.uuid4().hex * 2)
        self.config = directory / "keyserver.toml"
        self.config.write_text(
            f'data_dir = "data"\nmaster_secret_file = "master.secret"\n'
            f'allow_generated_master_secret = false\npublic_base_url = "{self.url}"\n'
        )
        self.cli("kek", "rotate")
        self.process = subprocess.Popen(
            [*KEYSERVER, "--config", str(self.config), "serve", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.process.stderr.read().decode()  # type: ignore[union-attr]
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "keyserver serve did not start"
                time.sleep(0.1)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*KEYSERVER, "--config", str(self.config), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyServerProcess]:
    server = KeyServerProcess(tmp_path_factory.mktemp("keyserver"))
    yield server
    server.stop()


def station_config(tmp_path: Path, keyserver_url: str | None = None, **destination: str) -> Path:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    data = tmp_path / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    work = Path("/dev/shm") / f"kiosk-doctor-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    text = f'[station]\nid = "doctor-test"\ndata_dir = "{data}"\nwork_dir = "{work}"\n'
    if keyserver_url:
        text += f'\n[keyserver]\nurl = "{keyserver_url}"\n'
    dest = {"name": "share", "type": "folder", "path": str(share)}
    if not keyserver_url:  # envelope sealing needs a key server; a passphrase destination does not
        dest |= {"encryption": "passphrase", "passphrase_file": str(tmp_path / "share.key")}
    dest |= destination
    text += "\n[[destination]]\n" + "".join(f'{k} = "{v}"\n' for k, v in dest.items())
    path = tmp_path / "kiosk.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _clean_shm() -> Iterator[None]:
    before = set(Path("/dev/shm").glob("kiosk-doctor-*")) if Path("/dev/shm").is_dir() else set()
    yield
    for leftover in set(Path("/dev/shm").glob("kiosk-doctor-*")) - before:
        leftover.rmdir()


def run_doctor(config: Path, *extra: str) -> tuple[int, list[dict[str, str]]]:
    done = subprocess.run(
        [*KIOSK, "--config", str(config), "doctor", "--json", "--timeout", "3", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = json.loads(done.stdout)
    return done.returncode, results


def by_name(results: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in results}


def test_json_shape_exit_code_and_machine_facts(tmp_path: Path) -> None:
    code, results = run_doctor(station_config(tmp_path))
    assert isinstance(results, list) and results
    for result in results:
        assert set(result) == {"name", "status", "detail", "fix"} and result["status"] in STATUSES
        if result["status"] in ("warn", "fail"):
            assert result["fix"], result
    checks = by_name(results)
    assert checks["config"]["status"] == "pass"
    assert checks["destination share"]["status"] == "pass"
    assert checks["data dir"]["status"] == "pass" and checks["outbox"]["detail"] == "empty"
    assert checks["camera"]["status"] == "skip" or "camera" in kiosk_config.Config.model_fields
    # Swap: whatever this machine really has.
    swaps = Path("/proc/swaps").read_text().splitlines()[1:]
    assert checks["swap"]["status"] == ("fail" if any(s.strip() for s in swaps) else "pass")
    # tmpfs: /dev/shm is tmpfs on this machine iff /proc/mounts says so.
    shm_is_tmpfs = any(
        line.split()[1] == "/dev/shm" and line.split()[2] == "tmpfs"
        for line in Path("/proc/mounts").read_text().splitlines()
    )
    assert checks["tmpfs"]["status"] == ("pass" if shm_is_tmpfs else "fail")
    # Exit code: 1 exactly when something failed.
    assert code == (1 if any(r["status"] == "fail" for r in results) else 0)


def test_work_dir_on_disk_fails(tmp_path: Path) -> None:
    config = station_config(tmp_path)
    disk = tmp_path / "work"
    disk.mkdir()
    text = config.read_text()
    config.write_text(text.replace(text.split('work_dir = "')[1].split('"')[0], str(disk)))
    found = doctor_host.mount_of(disk)
    code, results = run_doctor(config)
    tmpfs = by_name(results)["tmpfs"]
    if found and found[1] in doctor_host.TMPFS_TYPES:
        pytest.skip("the temp dir itself is on tmpfs here")
    assert tmpfs["status"] == "fail" and "not tmpfs" in tmpfs["detail"] and code == 1


def test_missing_folder_fails_and_bad_config_is_one_failure(tmp_path: Path) -> None:
    code, results = run_doctor(station_config(tmp_path, path=str(tmp_path / "not-mounted")))
    assert code == 1 and by_name(results)["destination share"]["status"] == "fail"
    broken = tmp_path / "broken.toml"
    broken.write_text('[station]\nid = "x"\n')
    code, results = run_doctor(broken)
    assert code == 1 and len(results) == 1 and results[0]["name"] == "config"
    assert "data_dir" in results[0]["detail"] and results[0]["status"] == "fail"


def test_human_output(tmp_path: Path) -> None:
    done = subprocess.run(
        [*KIOSK, "--config", str(station_config(tmp_path)), "doctor", "--timeout", "3"],
        capture_output=True,
        text=True,
    )
    assert "[ ok ] config" in done.stdout and "overall:" in done.stdout


def test_key_server_enrollment_and_key_version(key_server: KeyServerProcess, tmp_path: Path) -> None:
    config_path = station_config(tmp_path, key_server.url, type="keyserver-inbox", path="")
    config_path.write_text(config_path.read_text().replace('path = ""\n', ""))
    assert 'type = "keyserver-inbox"' in config_path.read_text()
    _, results = run_doctor(config_path)
    checks = by_name(results)
    assert checks["key server"]["status"] == "pass"
    assert checks["clock skew"]["status"] == "pass"  # same machine, same clock
    assert checks["enrollment"]["status"] == "fail" and "kiosk enroll" in checks["enrollment"]["fix"]
    assert checks["destination share"]["status"] == "pass"  # the key server inbox is reachable
    enroll_code = key_server.cli("station", "enroll-code").strip()
    runner = CliRunner()
    enrolled = runner.invoke(
        kiosk_main,
        ["--config", str(config_path), "enroll", "--key-server", key_server.url, "--code", enroll_code],
    )
    assert enrolled.exit_code == 0, enrolled.output

    def enrollment() -> doctor.CheckResult:
        return by_name_results(doctor.run_checks(kiosk_config.load(config_path), hardware=False, timeout=3))

    assert enrollment().status == "pass" and "the server's newest" in enrollment().detail
    key_server.cli("kek", "rotate")
    stale = enrollment()
    assert stale.status == "warn" and "kiosk refresh-keys" in stale.fix
    assert runner.invoke(kiosk_main, ["--config", str(config_path), "refresh-keys"]).exit_code == 0
    assert enrollment().status == "pass"


def by_name_results(results: list[doctor.CheckResult]) -> doctor.CheckResult:
    return next(r for r in results if r.name == "enrollment")


def test_unreachable_key_server_fails(tmp_path: Path) -> None:
    code, results = run_doctor(station_config(tmp_path, f"http://127.0.0.1:{free_port()}"))
    checks = by_name(results)
    assert code == 1 and checks["key server"]["status"] == "fail"
    assert checks["clock skew"]["status"] == "skip"


@pytest.mark.parametrize(("offset", "expected"), [(0, "pass"), (90, "warn"), (-600, "fail")])
def test_clock_skew_from_the_date_header(offset: int, expected: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(time.time() + offset, usegmt=True)

        def do_GET(self) -> None:
            body = b'{"status": "ok"}' if self.path == "/healthz" else b'{"keys": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = doctor.probe_keyserver(f"http://127.0.0.1:{server.server_port}", 3)
    finally:
        server.shutdown()
        server.server_close()
    assert probe.reachable and probe.skew_seconds is not None
    assert abs(probe.skew_seconds + offset) < 3
    assert doctor.check_clock_skew(probe).status == expected


def test_stuck_outbox_fails(tmp_path: Path) -> None:
    config = kiosk_config.load(station_config(tmp_path))
    outbox = Outbox(config.station.data_dir)
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    outbox.enqueue(report_id, {path: header}, {"share": path})
    assert doctor.check_outbox(config).status == "pass"
    outbox.mark_failed(outbox.deliveries()[0], "password refused", permanent=True)
    outbox.close()
    result = doctor.check_outbox(config)
    assert result.status == "fail" and "1 failed" in result.detail and "kiosk outbox" in result.fix


def test_camera_check_with_the_mock_and_a_missing_device() -> None:
    from kiosk.hardware.camera import CameraConfig

    result = doctor.check_camera(CameraConfig(backend="mock"), timeout=5)
    assert result.status == "pass" and "frame received" in result.detail
    missing = doctor.check_camera(CameraConfig(backend="opencv", device="/dev/video-none"), timeout=2)
    assert missing.status == "fail" and missing.fix


def test_gpio_check_with_gpiozero_mock_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gpiozero")
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from kiosk.hardware.gpio import GpioConfig

    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    try:
        result = doctor.check_gpio(GpioConfig())
    finally:
        Device.pin_factory.close()
        Device.pin_factory = previous
    assert result.status == "pass" and "GPIO17" in result.detail


def test_disk_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = kiosk_config.load(station_config(tmp_path))
    assert doctor.check_disk(config).status in ("pass", "warn", "fail")
    monkeypatch.setattr(checks, "DISK_WARN_BYTES", 1 << 62)  # the thresholds shared with the key server
    assert doctor.check_disk(config).status == "warn"
    monkeypatch.setattr(checks, "DISK_FAIL_BYTES", 1 << 61)
    assert doctor.check_disk(config).status == "fail"


def test_mount_lookup_prefers_the_innermost_mount() -> None:
    mounts = (
        "/dev/root / ext4 rw 0 0\n"
        "tmpfs /run tmpfs rw,nosuid 0 0\n"
        "tmpfs /run/kiosk tmpfs rw,nosuid,nodev,noexec,mode=700,noswap 0 0\n"
        "/dev/sda1 /mnt/with\\040space vfat rw 0 0\n"
    )
    assert doctor_host.mount_of(Path("/run/kiosk/x"), mounts) == (
        "/run/kiosk",
        "tmpfs",
        {"rw", "nosuid", "nodev", "noexec", "mode=700", "noswap"},
    )
    assert doctor_host.mount_of(Path("/run/kioskother"), mounts)[0] == "/run"  # type: ignore[index]
    assert doctor_host.mount_of(Path("/mnt/with space/f"), mounts)[1] == "vfat"  # type: ignore[index]
    assert doctor_host.active_swaps("Filename Type Size Used Priority\n/dev/zram0 partition 1 0 100\n") == [
        "/dev/zram0"
    ]


def test_run_checks_shape_for_healthz(tmp_path: Path) -> None:
    config = kiosk_config.load(station_config(tmp_path))
    results = doctor.run_checks(config, hardware=False, timeout=2)
    names = [r.name for r in results]
    assert names[0] == "config" and "outbox" in names and "swap" in names
    assert {r.status for r in results} <= STATUSES
    assert doctor.overall(results) in ("pass", "warn", "fail")
    assert json.loads(json.dumps([r.as_dict() for r in results]))[0]["name"] == "config"
