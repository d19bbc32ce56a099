"""`make demo`: the key server with its inbox, and a station with the mock camera, on embedded SQLite.

Everything lives under ./demo-data (or $KIOSK_DEMO_DIR) and is reused on the next run. Both servers listen
on 127.0.0.1 only, on ports 8470 (key server) and 8480 (station), or $KIOSK_DEMO_KEYSERVER_PORT and
$KIOSK_DEMO_STATION_PORT (a new demo directory takes the key server's port into its configuration). Ctrl-C
or SIGTERM stops them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from keyserver import demo as keyserver_demo
from kiosk import config as config_module
from kiosk import station

STATION_PORT = 8480  # the key server's: keyserver.demo.DEMO_PORT
STATION_PIN = "2468"
ADMIN_PIN = "13579"
DEMO_MRN = "DEMO-0001"
DEMO_BADGE = "735000000000987654"  # the GSRN on the mock camera's staff badge
_KEYSERVER = (sys.executable, "-m", "keyserver")
_KIOSK = (sys.executable, "-m", "kiosk.cli")


def _station_config(root: Path, keyserver_url: str) -> str:
    hasher = PasswordHasher()
    return f"""\
# Demo station: mock camera, key server inbox as the default destination.
[station]
id = "demo-station-1"
data_dir = "{root / "data"}"

[keyserver]
url = "{keyserver_url}"

[camera]
backend = "mock"
mock_scene = "follow-screens"     # badge at sign-in, wristband at the patient step, wound when capturing
still_size = [2028, 1520]

[ui]
admin_pin_hash = "{hasher.hash(ADMIN_PIN)}"
default_destinations = ["Key server inbox"]

[[staff]]
id = "RN-DEMO"
name = "Demo Nurse"
role = "Registered nurse"
badge = "{DEMO_BADGE}"
pin_hash = "{hasher.hash(STATION_PIN)}"

[[destination]]
name = "Key server inbox"
type = "keyserver-inbox"
recipients = ["nurse.lee"]

[[destination]]
name = "Clinic share (folder)"
type = "folder"
path = "{root / "share"}"
recipients = ["nurse.lee"]
"""


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} did not start (exit code {process.returncode}); see the output above")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL we built
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def _enroll_once(config: config_module.Config, keyserver: dict[str, Any]) -> None:
    if config.credentials_file.exists() and config.public_keys_file.exists():
        return
    station.enroll(config, keyserver["url"], keyserver["enrollment_code"])
    print(f"station {config.station.id} enrolled with the key server")


def main() -> None:
    root = Path(os.environ.get("KIOSK_DEMO_DIR", "demo-data")).resolve()
    keyserver_port = int(os.environ.get("KIOSK_DEMO_KEYSERVER_PORT", keyserver_demo.DEMO_PORT))
    station_port = int(os.environ.get("KIOSK_DEMO_STATION_PORT", STATION_PORT))
    (root / "share").mkdir(parents=True, exist_ok=True)
    keyserver = keyserver_demo.prepare(root / "keyserver", port=keyserver_port)
    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)

    # SIGTERM (kill, systemd, timeout) stops the demo like Ctrl-C: both end the wait below, then stop().
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        keyserver_process = subprocess.Popen(
            [*_KEYSERVER, "--config", keyserver["config_path"], "serve", "--port", str(keyserver["port"])]
        )
        children.append(keyserver_process)
        _wait_for(f"{keyserver['url']}/v1/keys", keyserver_process)

        station_dir = root / "station"
        station_dir.mkdir(parents=True, exist_ok=True)
        config_path = station_dir / "kiosk.toml"
        config_path.write_text(_station_config(station_dir, keyserver["url"]))
        config = config_module.load(config_path)
        _enroll_once(config, keyserver)
        _send_sample(config_path, station_dir)
        station_process = subprocess.Popen(
            [*_KIOSK, "--config", str(config_path), "serve", "--port", str(station_port)]
        )
        children.append(station_process)
        station_url = f"http://127.0.0.1:{station_port}"
        _wait_for(f"{station_url}/", station_process)

        print()
        print("Clinical Photo Kiosk demo is running (Ctrl-C to stop)")
        clinician, admin = keyserver["clinician"], keyserver["admin"]
        print(f"  station (touchscreen) {station_url}/  — staff PIN {STATION_PIN}, admin PIN {ADMIN_PIN}")
        print("                        the mock camera shows a badge, then a wristband, then a wound")
        print(f"  key server and inbox  {keyserver['url']}/")
        print(f"    clinician           {clinician['username']} / {clinician['password']}")
        print(f"    admin               {admin['username']} / {admin['password']}")
        print(f"  station config        {config_path}")
        print(
            f"  send from the CLI     {shutil.which('kiosk') or 'kiosk'} --config {config_path} send --help",
            flush=True,
        )
        while True:  # until a signal's handler raises KeyboardInterrupt
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def _send_sample(config_path: Path, station_dir: Path) -> None:
    marker = station_dir / "data" / ".demo-report-sent"
    if marker.exists():
        return
    photo = station_dir / "demo-wound.jpg"
    if not photo.exists():
        photo.write_bytes(_demo_photo())
    command = [
        *_KIOSK,
        *("--config", str(config_path), "send", "--destination", "Key server inbox", "--wait", "20"),
        *("--patient-id", DEMO_MRN, "--patient-name", "Demo Patient", "--birth-date", "1950-01-02"),
        *("--staff-id", "RN-DEMO", "--staff-name", "Demo Nurse"),
        *("--consent-method", "verbal", "--purpose", "clinical_care", "--purpose", "medical_record"),
        *("--photo", str(photo), "--site", "40983000:Skin of lower leg:left:front"),
    ]
    result = subprocess.run(
        command,
        check=False,
    )
    if result.returncode == 0:
        marker.touch()
        print(f"a demo report for {DEMO_MRN} is in the key server inbox")
    else:
        print("the demo report could not be delivered yet; the station's outbox keeps it", file=sys.stderr)


def _demo_photo() -> bytes:
    """A wound-like demo photo from the mock camera when available, else a plain generated JPEG."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1600, 1200), (214, 170, 140))
    draw = ImageDraw.Draw(image)
    draw.ellipse((560, 420, 1040, 780), fill=(150, 40, 45), outline=(110, 30, 30), width=12)
    for tick in range(0, 1000, 50):
        draw.line((300 + tick, 1050, 300 + tick, 1080 if tick % 100 else 1100), fill=(20, 20, 20), width=4)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


if __name__ == "__main__":
    main()
