"""The optional second GPIO button ("done taking photos"), pressed through gpiozero's MockFactory: on the
photos screen with a photo it opens review; everywhere else, and without a photo, it does nothing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.app.conftest import (
    Station,
    choose_site,
    sign_in_with_pin,
    start_station,
    station_toml,
    take_photos,
    type_patient,
    verbal_consent,
)

SECOND_PIN = 27


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    root = tmp_path_factory.mktemp("station-second")
    toml = station_toml(root).replace("led_pin = 22\n", f"led_pin = 22\nsecond_pin = {SECOND_PIN}\n")
    assert f"second_pin = {SECOND_PIN}" in toml
    running, stop = start_station(root, toml)
    yield running
    stop()


def press_second(station: Station) -> None:
    pin = station.factory.pin(SECOND_PIN)
    pin.drive_low()
    time.sleep(0.01)
    pin.drive_high()


def _settle() -> None:
    time.sleep(0.6)  # the capture thread takes the event within 0.25 s; a page would react within ~0.1 s


def test_second_button_opens_review_after_a_photo(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    type_patient(page)
    verbal_consent(page)
    choose_site(page, "back-sacrum")
    station.press_capture()  # the capture button, then at once the second one: the photo is taken first
    time.sleep(0.1)
    press_second(station)
    expect(page).to_have_url(re.compile(r"/review$"), timeout=15_000)
    expect(page.get_by_test_id("thumb")).to_have_count(1)
    session = station.runtime.sessions.current
    assert session is not None and [p.state for p in session.photos] == ["ready"]

    # on review the button does nothing: Send needs a tap by someone reading the screen
    press_second(station)
    _settle()
    expect(page).to_have_url(re.compile(r"/review$"))
    assert list(station.share.glob("*")) == [] and station.runtime.sessions.current is session


def test_no_photo_no_step(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    type_patient(page)
    verbal_consent(page)
    press_second(station)
    _settle()
    expect(page).to_have_url(re.compile(r"/capture$"))
    assert station.runtime.sessions.current.next_step_requests == 0


def test_ignored_before_consent(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    press_second(station)  # patient screen
    type_patient(page)
    press_second(station)  # consent screen
    _settle()
    expect(page.get_by_test_id("who-patient")).to_be_visible()
    session = station.runtime.sessions.current
    assert session.consent is None and session.next_step_requests == 0


def test_a_press_on_another_screen_does_not_move_on_later(page: Page, station: Station) -> None:
    sign_in_with_pin(page)
    type_patient(page)
    verbal_consent(page)
    take_photos(page, 1)
    page.get_by_test_id("site-button").click()  # the body map is open when the button is pressed
    expect(page.get_by_test_id("site-save")).to_be_visible()
    press_second(station)
    _settle()
    expect(page.get_by_test_id("site-save")).to_be_visible()
    page.get_by_test_id("region-front-head").click()
    page.get_by_test_id("site-save").click()
    expect(page.get_by_test_id("shoot")).to_be_visible()
    _settle()
    expect(page).to_have_url(re.compile(r"/capture$"))  # the earlier press is not replayed here
    press_second(station)
    expect(page).to_have_url(re.compile(r"/review$"), timeout=10_000)
