"""A real browser (Debian's chromium through Playwright) against a real key server, on both backends:
sign in, open a report from the inbox, check that the photo decrypted IN THE PAGE is byte-for-byte the
original (SHA-256 computed in the page with crypto.subtle), open a file by drag-and-drop input, and see
the release in the audit view."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from keyserver import audit, db
from tests.browser import chromium

from .conftest import PASSWORD, KeyServer


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as instance:
        yield instance


def _photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), (180, 90, 60)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _bundle(photo: bytes) -> bytes:
    report = {
        "report_id": "ignored-by-the-page",
        "created_at": "2026-01-02T03:04:05Z",
        "patient": {"mrn": "TEST-0001", "name": "Test Patient"},
        "consent": {"method": "verbal", "consenter": "patient", "purposes": {"clinical_care": True}},
        "photos": [
            {"file": "photos/photo-01.jpg", "sha256": hashlib.sha256(photo).hexdigest(), "notes": "left heel"}
        ],
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("report.json", __import__("json").dumps(report))
        z.writestr("report.xml", "<report/>")
        z.writestr("report.pdf", b"%PDF-1.4\n%%EOF\n")
        z.writestr("photos/photo-01.jpg", photo)
    return out.getvalue()


def _login(page: Page, url: str, username: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_open_report_in_the_browser(ks: KeyServer, browser: Browser) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee")
    ks.add_user("audrey", role="auditor")
    photo = _photo()
    path, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"], payload=_bundle(photo))
    report_id = package["header"]["report_id"]
    assert ks.post("/v1/inbox", "ward-3", data=path.read_bytes()).status_code == 201

    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, ks.url, "nurse.lee")
    page.goto(f"{ks.url}/inbox")
    page.click(f"tr[data-report-id='{report_id}'] a.open")
    page.wait_for_selector("#report[data-state='done'], #report[data-state='error']", timeout=20_000)
    assert page.get_attribute("#report", "data-state") == "done", page.inner_text("#status")
    assert page.get_attribute("#photos img", "data-sha256") == hashlib.sha256(photo).hexdigest()
    assert "checksum ok" in page.inner_text("#photos figcaption")
    assert "Test Patient" in page.inner_text("#summary")
    # The decoded photo really rendered (a JPEG the browser could decode, 48 px wide).
    assert page.eval_on_selector("#photos img", "img => img.decode().then(() => img.naturalWidth)") == 48
    assert not errors

    # "Open a file": the same report from disk through the file input.
    page.goto(f"{ks.url}/open")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#report[data-state='done'], #report[data-state='error']", timeout=20_000)
    assert page.get_attribute("#photos img", "data-sha256") == hashlib.sha256(photo).hexdigest()
    context.close()

    with db.read(ks.engine) as conn:
        releases = [r for r in audit.query(conn, report_id=report_id) if r["action"] == "key.release"]
    assert [(r["actor"], r["outcome"], r["details"]["via"]) for r in releases] == [
        ("user:nurse.lee", "released", "session")
    ] * 2

    # The auditor sees both releases in the audit view.
    context = browser.new_context()
    page = context.new_page()
    _login(page, ks.url, "audrey")
    page.goto(f"{ks.url}/audit?report_id={report_id}")
    rows = page.locator("tr[data-action='key.release'][data-outcome='released']")
    assert rows.count() == 2
    assert "intact" in page.inner_text("#chain")
    context.close()


def test_non_recipient_sees_a_refusal(ks: KeyServer, browser: Browser) -> None:
    ks.enroll("ward-3")
    ks.add_user("dr.who")
    path, _ = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"], payload=_bundle(_photo()))
    context = browser.new_context()
    page = context.new_page()
    _login(page, ks.url, "dr.who")
    page.goto(f"{ks.url}/open")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#report[data-state='error']", timeout=20_000)
    assert "not a recipient" in page.inner_text("#status")
    assert page.locator("#photos img").count() == 0
    context.close()
