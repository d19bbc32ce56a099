"""The real station app under waitress on a free 127.0.0.1 port, driven by real headless Chromium.

Only the camera (the shipped mock, showing a wristband scene the real decoder reads) and the GPIO pins
(gpiozero's MockFactory) are stand-ins. Reports go to a real folder destination sealed with a passphrase,
so tests open them with the real reader and check what a clinic would receive.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from gpiozero.pins.mock import MockFactory
from playwright.sync_api import Browser, Page, expect

from kiosk import config as config_module
from kiosk.app import create_app
from kiosk.app.cli import make_server
from kiosk.app.runtime import StationRuntime
from kiosk.report.bundle import read_bundle
from kiosk.sealing import passphrase
from kiosk.sealing.sealed_file import decrypt_payload, read_sealed
from tests.browser import chromium

STAFF_ID, STAFF_PIN, STAFF_NAME = "1001", "2468", "Alex Nurse"
BADGE_GSRN = "735000000000987654"  # the mock camera's staff-badge scene carries (8017) this GSRN
ADMIN_PIN = "13579"
CAPTURE_PIN = 17
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)  # fast hashes for tests only
STAFF_PIN_HASH = _hasher.hash(STAFF_PIN)
ADMIN_PIN_HASH = _hasher.hash(ADMIN_PIN)


def station_toml(root: Path, *, idle_timeout: float = 120, idle_warning: float = 20, extra: str = "") -> str:
    return f"""
[station]
id = "test-station"
data_dir = "{root / "data"}"

[[destination]]
name = "Clinic share"
type = "folder"
path = "{root / "share"}"
encryption = "passphrase"
passphrase_file = "{root / "share.key"}"

[camera]
backend = "mock"
mock_scene = "wristband-qr"
still_size = [2028, 1520]
lock_file = "{root / "camera.lock"}"

[gpio]
capture_pin = {CAPTURE_PIN}
led_pin = 22
bounce_time = 0
min_interval = 0.05

[ui]
idle_timeout = {idle_timeout}
idle_warning = {idle_warning}
admin_pin_hash = "{ADMIN_PIN_HASH}"
consent_text_file = "{root / "consent.txt"}"
consent_text_version = "wound-clinic-2024-03"
wedge_max_gap_ms = 120

[[staff]]
id = "{STAFF_ID}"
name = "{STAFF_NAME}"
role = "RN"
badge = "{BADGE_GSRN}"
pin_hash = "{STAFF_PIN_HASH}"
{extra}
"""


@dataclass
class Station:
    url: str
    root: Path
    runtime: StationRuntime
    app: Any
    factory: MockFactory

    @property
    def share(self) -> Path:
        return self.root / "share"

    @property
    def key_file(self) -> Path:
        return self.root / "share.key"

    def show(self, scene: str) -> None:
        self.runtime.camera.show(scene)  # type: ignore[attr-defined]

    def press_capture(self) -> None:
        pin = self.factory.pin(CAPTURE_PIN)
        pin.drive_low()
        time.sleep(0.01)
        pin.drive_high()

    def wait_for_report(self, report_id: str | None = None, timeout: float = 20) -> dict[str, bytes]:
        """The delivered sealed report (by id, or the only one), opened with the destination's passphrase."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = sorted(self.share.glob("*.cpseal"))
            if report_id:
                files = [f for f in files if f.name.startswith(report_id)]
            if files:
                return open_report(files[-1], self.key_file)
            time.sleep(0.1)
        raise AssertionError(f"no sealed report arrived in {self.share}")

    def clear_share(self) -> None:
        for f in self.share.glob("*"):
            f.unlink()


def open_report(path: Path, key_file: Path) -> dict[str, bytes]:
    with path.open("rb") as handle:
        sealed = read_sealed(handle)
        plaintext = io.BytesIO()
        decrypt_payload(
            handle, sealed, plaintext, passphrase=passphrase.read_file(key_file, check_strength=False)
        )
    return read_bundle(plaintext.getvalue())


def report_json(bundle: dict[str, bytes]) -> dict[str, Any]:
    return json.loads(bundle["report.json"])


def start_station(root: Path, toml: str) -> tuple[Station, Callable[[], None]]:
    (root / "share").mkdir(parents=True, exist_ok=True)
    if not (root / "share.key").exists():
        passphrase.write_new_file(root / "share.key")
    (root / "consent.txt").write_text(
        "Wound clinic photography consent (test wording).\nPhotos are sealed on the station.\n"
    )
    (root / "kiosk.toml").write_text(toml)
    config = config_module.load(root / "kiosk.toml")
    factory = MockFactory()
    app = create_app(config, pin_factory=factory)
    server = make_server(app, "127.0.0.1", 0, threads=16)
    thread = threading.Thread(target=_run, args=(server,), daemon=True)
    thread.start()
    runtime: StationRuntime = app.extensions["station"]
    station = Station(f"http://127.0.0.1:{server.effective_port}", root, runtime, app, factory)

    def stop() -> None:
        server.close()
        runtime.stop()
        factory.reset()

    return station, stop


def _run(server: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # closed
        server.run()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    root = tmp_path_factory.mktemp("station")
    running, stop = start_station(root, station_toml(root))
    yield running
    stop()


@pytest.fixture
def page(browser: Browser, station: Station) -> Iterator[Page]:
    station.show("empty")  # tests show a wristband or badge when they want one scanned
    context = browser.new_context(viewport={"width": 1280, "height": 720}, base_url=station.url)
    context.set_default_timeout(10_000)
    p = context.new_page()
    yield p
    context.close()
    current = station.runtime.sessions.current
    if current is not None:  # leave the station clean for the next test
        station.runtime.sessions.end(current, "test-teardown")


# --- steps shared by the tests (each as a nurse would do it) -------------------------------------------
def sign_in_with_pin(page: Page, staff_id: str = STAFF_ID, pin: str = STAFF_PIN) -> None:
    page.goto("/")
    page.locator("#staff_id").fill(staff_id)
    page.locator("#pin").click()
    keypad = page.get_by_test_id("keypad")
    page.wait_for_load_state()  # the keypad's script is running
    for digit in pin:
        keypad.locator(f'button[data-key="{digit}"]').click()
    expect(page.locator("#pin")).to_have_value(pin)
    page.get_by_test_id("pin-submit").click()
    expect(page).to_have_url(re.compile(r"/patient$"))


def type_patient(
    page: Page, mrn: str = "MRN0012345", dob: tuple[str, str, str] = ("01", "01", "1980")
) -> None:
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill(mrn)
    page.get_by_test_id("mrn-submit").click()
    page.get_by_test_id("type-dob").click()
    page.get_by_test_id("dob-day").fill(dob[0])
    page.get_by_test_id("dob-month").fill(dob[1])
    page.get_by_test_id("dob-year").fill(dob[2])
    page.get_by_test_id("dob-submit").click()
    expect(page.get_by_test_id("who-patient")).to_be_visible()


def verbal_consent(page: Page, answers: str = "yyynn") -> None:
    page.get_by_test_id("who-patient").click()
    page.get_by_test_id("how-verbal").click()
    for answer in answers:
        page.get_by_test_id("answer-yes" if answer == "y" else "answer-no").click()
    expect(page.get_by_test_id("shoot")).to_be_visible()


def take_photos(page: Page, count: int) -> None:
    for n in range(1, count + 1):
        page.get_by_test_id("shoot").click()
        expect(page.locator('[data-testid="thumb"][data-state="ready"]')).to_have_count(n, timeout=45_000)


def choose_site(page: Page, region: str = "front-lower-leg-b", side: str | None = None) -> None:
    page.get_by_test_id("site-button").click()
    if region.startswith("back-"):
        page.get_by_test_id("view-back").click()
    page.get_by_test_id(f"region-{region}").click()
    if side:
        page.get_by_test_id(f"lat-{side}").click()
    page.get_by_test_id("site-save").click()
    expect(page.get_by_test_id("shoot")).to_be_visible()


def send(page: Page) -> None:
    page.get_by_test_id("to-review").click()
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("done")).to_be_visible(timeout=15_000)
