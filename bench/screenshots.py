"""Screenshots of every station screen at the station's display sizes, for docs/station.md and the README.

    .venv/bin/python bench/screenshots.py [--out docs/screenshots] [--size 800x480 --size 1280x720]

Runs the real app (waitress on a free loopback port) with the mock camera and mock GPIO pins, and walks a
nurse's flow in headless Chromium. The station looks numbers up (`[patient_lookup]`) on the tests' small
real FHIR server (tests/fhir_server.py) and has an email destination whose recipients the nurse picks, served
by the tests' real SMTP server (tests/smtp_server.py; the walk only shows that choice, it mails nothing), all
on 127.0.0.1. All patient details are invented: the mock camera's, and the FHIR server's one demo patient.
tests/app/test_station_screenshots.py runs this too, so the pictures always match the code.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (after the path: bench scripts run directly)

SIZES = [(800, 480), (1280, 720)]
STAFF_PIN, ADMIN_PIN = "2468", "13579"
# The FHIR server's only patient, obviously invented; its number is typed, so the record is looked up.
MRN_SYSTEM = "https://hospital.example.org/fhir/mrn"
RECORD_MRN, RECORD_NAME, RECORD_DOB = "DEMO0042", ("Demo", "Patient"), "1985-06-15"
EMAIL = "Wound team (email)"  # the email destination whose recipients the nurse picks


def capture(page: Any, path: Path, attempts: int = 3) -> None:
    """page.screenshot, retried: on a busy machine Chromium sometimes answers "Unable to capture screenshot"
    while it is still compositing, and a moment later succeeds."""
    for attempt in range(attempts):
        try:
            page.screenshot(path=str(path))
            return
        except PlaywrightError:
            if attempt == attempts - 1:
                raise
            page.wait_for_timeout(500)


def demo_toml(
    root: Path,
    *,
    still_size: str = "",
    idle_timeout: float = 600,
    smtp_port: int = 25,
    fhir_url: str | None = None,
) -> str:
    """The demo station's kiosk.toml. The email destination talks to a relay on 127.0.0.1 (`smtp_port`);
    with `fhir_url`, numbers without a second identifier are looked up there."""
    from argon2 import PasswordHasher

    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    lookup = f"""
[patient_lookup]
fhir_base_url = "{fhir_url}"
identifier_system = "{MRN_SYSTEM}"
timeout = 3
"""
    return f"""
[station]
id = "wound-clinic-1"
data_dir = "{root / "data"}"

[[destination]]
name = "Clinic share"
type = "folder"
path = "{root / "share"}"
encryption = "passphrase"
passphrase_file = "{root / "share.key"}"

[[destination]]
name = "{EMAIL}"
type = "email"
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "photo-station@example.org"
encryption = "passphrase"
passphrase_file = "{root / "share.key"}"
ask_recipients = true
allowed_domains = ["example.org"]

[[destination.address_book]]
name = "Wound team"
address = "wound-team@example.org"

[[destination.address_book]]
name = "Tissue viability"
address = "tissue.viability@example.org"

[camera]
backend = "mock"
mock_scene = "empty"
lock_file = "{root / "camera.lock"}"
{still_size}

[gpio]
capture_pin = 17
led_pin = 22
bounce_time = 0
min_interval = 0.05

[ui]
idle_timeout = {idle_timeout}
admin_pin_hash = "{hasher.hash(ADMIN_PIN)}"
default_destinations = ["Clinic share"]

[[staff]]
id = "1001"
name = "Alex Nurse"
role = "RN"
badge = "735000000000987654"
pin_hash = "{hasher.hash(STAFF_PIN)}"
{lookup if fhir_url else ""}"""


@contextmanager
def demo_station(root: Path, **toml: Any) -> Iterator[tuple[str, Any, Any]]:
    """(base URL, StationRuntime, gpiozero MockFactory) of a running station app."""
    from gpiozero.pins.mock import MockFactory

    from kiosk import config as config_module
    from kiosk.app import create_app
    from kiosk.app.cli import make_server
    from kiosk.sealing import passphrase

    (root / "share").mkdir(parents=True, exist_ok=True)
    if not (root / "share.key").exists():
        passphrase.write_new_file(root / "share.key")
    (root / "kiosk.toml").write_text(demo_toml(root, **toml))
    factory = MockFactory()
    app = create_app(config_module.load(root / "kiosk.toml"), pin_factory=factory)
    server = make_server(app, "127.0.0.1", 0, threads=16)

    def run() -> None:
        with contextlib.suppress(OSError, ValueError):
            server.run()

    threading.Thread(target=run, daemon=True).start()
    runtime = app.extensions["station"]
    try:
        yield f"http://127.0.0.1:{server.effective_port}", runtime, factory
    finally:
        server.close()
        runtime.stop()
        factory.reset()


def walk(page: Any, runtime: Any, shot: Callable[[str], None]) -> None:
    """A nurse's flow, with a screenshot of every screen on the way."""
    from playwright.sync_api import expect

    camera = runtime.camera
    camera.show("empty")
    page.goto("/")
    page.locator("#staff_id").fill("1001")
    page.locator("#pin").fill("24")
    shot("signin")
    page.locator("#pin").fill(STAFF_PIN)
    page.get_by_test_id("pin-submit").click()
    expect(page).to_have_url(re.compile(r"/patient$"))
    page.wait_for_timeout(300)
    shot("patient-scan")
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill("MRN00123")
    page.get_by_test_id("mrn").click()
    shot("patient-type")
    page.goto("/patient")
    camera.show("wristband-qr")
    expect(page.get_by_test_id("confirm-mrn")).to_be_visible(timeout=10_000)
    camera.show("wound")
    shot("patient-confirm")
    page.get_by_test_id("matches-dob").click()
    shot("consent-who")
    page.get_by_test_id("who-guardian").click()
    page.get_by_test_id("consenter-name").fill("Pat Rivera")
    shot("consent-name")
    page.get_by_test_id("osk").locator('button[data-key="Enter"]').click()
    shot("consent-how")
    page.get_by_test_id("how-written").click()
    shot("consent-purpose")
    for answer in "yyynn":
        page.get_by_test_id("answer-yes" if answer == "y" else "answer-no").click()
    box = page.get_by_test_id("signature-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.65)
    page.mouse.down()
    for i in range(1, 40):
        x = box["x"] + box["width"] * (0.2 + i * 0.015)
        y = box["y"] + box["height"] * (0.65 - 0.25 * abs(((i % 10) - 5) / 5))
        page.mouse.move(x, y)
    page.mouse.up()
    shot("consent-sign")
    page.get_by_test_id("signature-done").click()
    page.get_by_test_id("site-button").click()
    page.get_by_test_id("region-front-lower-leg-b").click()
    shot("bodymap")
    page.get_by_test_id("site-save").click()
    for n in (1, 2, 3):
        page.get_by_test_id("shoot").click()
        expect(page.locator('[data-testid="thumb"][data-state="ready"]')).to_have_count(n, timeout=45_000)
    shot("capture")
    page.get_by_test_id("thumb").first.click()
    shot("photo")
    page.get_by_test_id("site-save").click()
    page.get_by_test_id("to-review").click()
    shot("review")
    # the email destination: the nurse ticks who gets this report; untick it again, so nothing is mailed
    email = page.get_by_test_id("destination").filter(has_text=EMAIL)
    email.click()
    recipients = page.get_by_test_id("recipients")
    team = recipients.locator('[data-testid="recipient"][data-address="wound-team@example.org"]')
    team.click()
    expect(team).to_have_attribute("aria-checked", "true")
    # the Send list scrolls on its own: the email button at its top shows it ticked, even at 800x480
    email.evaluate("button => button.scrollIntoView({block: 'start'})")
    shot("send-recipients")
    email.click()
    expect(recipients).to_have_count(0)
    page.get_by_test_id("cancel").click()
    page.wait_for_timeout(200)
    shot("cancel-dialog")
    page.keyboard.press("Escape")
    key = runtime.config.destination[0].passphrase_file
    key.chmod(0o644)
    try:
        page.get_by_test_id("send").click()
        expect(page.get_by_test_id("send-error")).to_be_visible()
        shot("send-error")
    finally:
        key.chmod(0o600)
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("done")).to_be_visible(timeout=15_000)
    shot("done")
    # the idle warning, shown on a fresh session
    page.goto("/")
    page.locator("#staff_id").fill("1001")
    page.locator("#pin").fill(STAFF_PIN)
    page.get_by_test_id("pin-submit").click()
    # a number with no name or date of birth: the hospital record (FHIR) has them; the patient says No
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill(RECORD_MRN)
    page.get_by_test_id("mrn-submit").click()
    expect(page.get_by_test_id("record-dob")).to_have_text(RECORD_DOB)
    shot("patient-record")
    page.get_by_test_id("record-no").click()
    expect(page).to_have_url(re.compile(r"/patient\?error=1$"))
    # a number the record does not know: the date of birth is typed
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill("MRN00123")
    page.get_by_test_id("mrn-submit").click()
    page.get_by_test_id("type-dob").click()
    shot("patient-dob")
    page.wait_for_timeout(800)  # let the page's last activity ping land first
    session = runtime.sessions.current
    session.last_activity -= runtime.config.ui.idle_timeout - 14
    expect(page.get_by_test_id("idle-warning")).to_be_visible(timeout=5_000)
    shot("idle-warning")
    runtime.sessions.end(session, "screenshots")
    page.goto("/admin/login")
    page.get_by_test_id("admin-pin").fill("135")
    shot("admin-login")
    page.get_by_test_id("admin-pin").fill(ADMIN_PIN)
    page.get_by_test_id("admin-pin-submit").click()
    shot("admin-settings")
    page.get_by_test_id("tab-outbox").click()
    page.wait_for_timeout(300)
    shot("admin-outbox")
    page.get_by_test_id("tab-camera").click()
    page.get_by_test_id("test-still").click()
    expect(page.get_by_test_id("still-info")).to_be_visible(timeout=20_000)
    shot("admin-camera")
    camera.show("wristband-gs1-datamatrix")
    page.get_by_test_id("tab-scan").click()
    expect(page.get_by_test_id("scan-result")).to_contain_text("DataMatrix", timeout=10_000)
    shot("admin-scan")
    page.get_by_test_id("admin-logout").click()
    camera.show("empty")


def demo_record(fhir: Any) -> None:
    """The FHIR server's one patient: the record behind RECORD_MRN."""
    given, family = RECORD_NAME
    fhir.add_patient(
        MRN_SYSTEM,
        RECORD_MRN,
        name=[{"use": "official", "family": family, "given": [given]}],
        birthDate=RECORD_DOB,
    )


def run(out_dir: Path, sizes: list[tuple[int, int]] = SIZES) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from tests.fhir_server import FhirServer, running
    from tests.smtp_server import smtp_server

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(FhirServer()) as fhir,
        smtp_server() as smtp,
        demo_station(
            Path(tmp), still_size="still_size = [2028, 1520]", smtp_port=smtp.port, fhir_url=fhir.url
        ) as (url, runtime, _factory),
        sync_playwright() as pw,
    ):
        demo_record(fhir)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width, height in sizes:
                context = browser.new_context(viewport={"width": width, "height": height}, base_url=url)
                context.set_default_timeout(15_000)
                page = context.new_page()

                def shot(name: str, w: int = width, h: int = height, p: Any = page) -> None:
                    path = out_dir / f"station-{name}-{w}x{h}.png"
                    capture(p, path)
                    written.append(path)

                walk(page, runtime, shot)
                context.close()
        finally:
            browser.close()
        if smtp.mailbox.received:
            raise RuntimeError("the walk only shows the email recipient choice; it must not mail anything")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--size", action="append", help="WxH (repeat); default 800x480 and 1280x720")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.size] if args.size else SIZES
    for path in run(args.out, sizes):  # type: ignore[arg-type]
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
