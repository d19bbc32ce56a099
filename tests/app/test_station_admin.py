"""Admin screens (PIN, settings, outbox with retry, enrollment, camera and barcode tests), and sending to a
real key server's inbox (`keyserver serve` as a process) after enrolling the station from the admin screen."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from tests.app.conftest import (
    ADMIN_PIN,
    Station,
    choose_site,
    sign_in_with_pin,
    start_station,
    station_toml,
    take_photos,
    type_patient,
    verbal_consent,
)
from tests.net import free_port

_SCRIPT = Path(sys.executable).parent / "keyserver"
KEYSERVER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "keyserver"]


@dataclass
class KeyServer:
    url: str
    enrollment_code: str
    clinician_token: str


@pytest.fixture(scope="module")
def keyserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyServer | None]:
    """The real key server (`keyserver serve`), prepared like `make demo` does; None if it cannot start."""
    try:
        from keyserver import db, users
        from keyserver import demo as keyserver_demo
        from keyserver.config import load_config
    except ImportError as exc:  # pragma: no cover - the key server package is part of this repository
        pytest.skip(f"key server package not importable: {exc}")
    root = tmp_path_factory.mktemp("keyserver")
    port = free_port()
    info = keyserver_demo.prepare(root, port=port)
    engine = db.engine_for(load_config(Path(info["config_path"])))
    with db.write(engine) as conn:
        token = users.create_token(conn, keyserver_demo.CLINICIAN, actor="test")
    engine.dispose()
    process = subprocess.Popen(
        [*KEYSERVER, "--config", info["config_path"], "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 40
    ready = False
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(requests.ConnectionError):
            ready = requests.get(f"{info['url']}/v1/keys", timeout=1).status_code == 200
        if ready:
            break
        time.sleep(0.2)
    if not ready:
        process.kill()
        yield None
        return
    yield KeyServer(info["url"], info["enrollment_code"], token)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory, keyserver: KeyServer | None) -> Iterator[Station]:
    root = tmp_path_factory.mktemp("station-admin")
    url = keyserver.url if keyserver else "http://127.0.0.1:9"
    extra = f"""
[keyserver]
url = "{url}"

[[destination]]
name = "Key server inbox"
type = "keyserver-inbox"
recipients = ["nurse.lee"]

[[destination]]
name = "Unmounted share"
type = "folder"
path = "{root / "unmounted"}"
encryption = "passphrase"
passphrase_file = "{root / "share.key"}"
"""
    running, stop = start_station(root, station_toml(root, extra=extra))
    yield running
    stop()


def admin_sign_in(page: Page, pin: str = ADMIN_PIN) -> None:
    page.goto("/")
    page.get_by_test_id("admin-link").click()
    page.wait_for_load_state()  # the keypad's script is running
    for digit in pin:
        page.locator(f'.keypad button[data-key="{digit}"]').click()
    expect(page.get_by_test_id("admin-pin")).to_have_value(pin)
    page.get_by_test_id("admin-pin-submit").click()


def to_review_with(page: Page, wanted: str) -> None:
    """Photos taken; on the review screen only `wanted` is selected."""
    sign_in_with_pin(page)
    type_patient(page)
    verbal_consent(page)
    choose_site(page, "front-forearm-a")
    take_photos(page, 1)
    page.get_by_test_id("to-review").click()
    expect(page.get_by_test_id("send")).to_be_visible()  # the review page, not the capture page
    buttons = page.get_by_test_id("destination")
    for index in range(buttons.count()):
        button = buttons.nth(index)
        name = button.inner_text()
        selected = button.get_attribute("aria-pressed") == "true"
        if (wanted in name) != selected:
            button.click()
            # A toggle is a form post and a new page: wait for this button's new state before reading the
            # next one (waiting for "load" could still see the old page on a busy machine).
            expect(button).to_have_attribute("aria-pressed", "false" if selected else "true")
    expect(page.locator('[data-testid="destination"][aria-pressed="true"]')).to_have_count(1)
    expect(page.locator('[data-testid="destination"][aria-pressed="true"]')).to_contain_text(wanted)


def test_admin_pin_settings_and_destinations(page: Page, station: Station) -> None:
    admin_sign_in(page, "00000")
    expect(page.get_by_test_id("error")).to_have_text("Wrong PIN.")
    admin_sign_in(page)
    settings = page.get_by_test_id("settings")
    expect(settings).to_contain_text("test-station")
    expect(settings).to_contain_text("mock")
    expect(settings).not_to_contain_text("argon2")  # no secrets on screen
    page.get_by_test_id("tab-destinations").click()
    expect(page.get_by_test_id("destinations")).to_contain_text("Unmounted share")
    page.get_by_test_id("admin-logout").click()
    page.goto("/admin/")
    expect(page.get_by_test_id("admin-pin")).to_be_visible()


def test_outbox_list_and_retry(page: Page, station: Station, browser: Browser) -> None:
    to_review_with(page, "Unmounted share")
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("done")).to_be_visible(timeout=45_000)
    report_id = station.runtime.events.recent(10)[-2].report_id or ""
    admin_sign_in(page)
    page.get_by_test_id("tab-outbox").click()
    row = page.get_by_test_id("outbox-row").filter(has_text="Unmounted share")
    expect(row).to_contain_text("is not available", timeout=10_000)  # the share is not mounted
    (station.root / "unmounted").mkdir()
    row.get_by_test_id("retry-one").click()
    expect(page.get_by_test_id("outbox-message")).to_contain_text("retried now")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not list((station.root / "unmounted").glob("*.cpseal")):
        time.sleep(0.1)
    delivered = list((station.root / "unmounted").glob("*.cpseal"))
    assert delivered and delivered[0].name.startswith(report_id)


def test_camera_and_barcode_tests(page: Page, station: Station) -> None:
    admin_sign_in(page)
    page.get_by_test_id("tab-camera").click()
    page.get_by_test_id("test-still").click()
    expect(page.get_by_test_id("still-info")).to_contain_text("2028×1520", timeout=15_000)
    expect(page.get_by_test_id("still-image")).to_be_visible()
    station.show("wristband-datamatrix")
    page.get_by_test_id("tab-scan").click()
    expect(page.get_by_test_id("scan-result")).to_contain_text("DataMatrix", timeout=10_000)
    expect(page.get_by_test_id("scan-result")).to_contain_text("MRN0012345")


def test_not_enrolled_then_enroll_from_admin_and_send_to_key_server_inbox(
    page: Page, station: Station, browser: Browser, keyserver: KeyServer | None
) -> None:
    if keyserver is None:
        pytest.skip("`keyserver serve` did not start, so the inbox cannot be tested here")
    to_review_with(page, "Key server inbox")
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("send-error")).to_contain_text("Station not enrolled")
    assert station.runtime.sessions.current is not None  # nothing lost

    # IT enrolls the station from the admin screen (another browser), then the nurse taps Retry
    admin = browser.new_context(viewport={"width": 1280, "height": 720}, base_url=station.url).new_page()
    admin_sign_in(admin)
    admin.get_by_test_id("tab-enroll").click()
    admin.get_by_test_id("enroll-url").fill(keyserver.url)
    admin.get_by_test_id("enroll-code").fill(keyserver.enrollment_code)
    admin.get_by_test_id("osk").locator('button[data-key="Enter"]').click()  # OK on the on-screen keyboard
    expect(admin.get_by_test_id("message")).to_contain_text("Enrolled", timeout=15_000)
    admin.context.close()

    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("done")).to_be_visible(timeout=45_000)
    report_id = next(
        r.report_id for r in reversed(station.runtime.events.recent(10)) if r.event == "report-sent"
    )
    deadline = time.monotonic() + 20
    found: list[dict] = []
    while time.monotonic() < deadline and not found:
        listing = requests.get(
            f"{keyserver.url}/v1/inbox",
            headers={"Authorization": f"Bearer {keyserver.clinician_token}"},
            timeout=5,
        ).json()
        found = [r for r in listing["reports"] if r.get("report_id") == report_id]
        time.sleep(0.2)
    assert found, f"report {report_id} did not reach the key server inbox"


def test_healthz_serves_the_doctor_checks_for_monitoring(station: Station) -> None:
    answer = requests.get(f"{station.url}/healthz", timeout=60)
    body = answer.json()
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["camera (station app)"]["status"] == "pass"
    assert checks["camera"]["status"] == "skip", "the app owns the camera: /healthz must not open it again"
    assert {"swap", "data dir", "free disk", "outbox", "config"} <= set(checks)
    assert body["status"] in ("pass", "warn", "fail")
    assert answer.status_code == (503 if body["status"] == "fail" else 200)
    assert "MRN" not in answer.text
