"""Idle timeout: a visible countdown, "Continue" keeps the session, no touch wipes it (timeout 8 s here:
short, yet long enough that signing in and typing a patient never idles out on a busy CI machine)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.app.conftest import (
    Station,
    sign_in_with_pin,
    start_station,
    station_toml,
    type_patient,
)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    root = tmp_path_factory.mktemp("station-idle")
    running, stop = start_station(root, station_toml(root, idle_timeout=8, idle_warning=6))
    yield running
    stop()


def test_continue_keeps_the_session(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    warning = page.get_by_test_id("idle-warning")
    expect(warning).to_be_visible(timeout=6_000)
    page.locator("#idle-continue").click()
    expect(warning).to_be_hidden()
    assert station.runtime.sessions.current is not None


def test_idle_timeout_wipes_the_session(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    type_patient(page)
    session = station.runtime.sessions.current
    expect(page.get_by_test_id("idle-warning")).to_be_visible(timeout=6_000)
    expect(page.get_by_test_id("idle-warning")).to_contain_text("s")
    expect(page).to_have_url(re.compile(r"/\?ended=idle$"), timeout=15_000)
    expect(page.get_by_test_id("notice")).to_contain_text("without activity")
    assert station.runtime.sessions.current is None
    assert session.wiped == "idle-timeout" and session.patient is None
    time.sleep(0.2)
    assert ("session-ended", "idle-timeout") in [
        (r.event, r.details.get("reason")) for r in station.runtime.events.recent(5)
    ]
