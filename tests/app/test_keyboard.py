"""The on-screen keyboard must never swallow a tap on the screen's own buttons."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

from tests.app.conftest import Station, sign_in_with_pin


def open_name_keyboard(page: Page) -> Locator:
    """The 'type the patient's name' screen with its on-screen keyboard up."""
    sign_in_with_pin(page)
    page.get_by_test_id("type-number").click()
    page.get_by_test_id("mrn").fill("MRN0077777")
    page.get_by_test_id("mrn-submit").click()
    page.get_by_test_id("type-name").click()
    keyboard = page.get_by_test_id("osk")
    page.get_by_test_id("typed-name").click()
    expect(keyboard).to_be_visible()
    return keyboard


def test_tapping_confirm_with_the_keyboard_open_submits(page: Page, station: Station) -> None:
    # Closing the keyboard shrinks the page; if it closed on pointerdown, Confirm moved away before the
    # pointerup and the nurse's tap did nothing.
    keyboard = open_name_keyboard(page)
    for key in "ana":
        keyboard.locator(f'button[data-key="{key}"]').click()
    expect(page.get_by_test_id("typed-name")).to_have_value("ana")
    expect(keyboard).to_be_visible()

    page.get_by_test_id("name-submit").click()

    expect(page.get_by_test_id("who-patient")).to_be_visible()
    expect(keyboard).to_be_hidden()


def test_tapping_outside_closes_the_keyboard(page: Page, station: Station) -> None:
    keyboard = open_name_keyboard(page)
    page.locator("h1").first.click()
    expect(keyboard).to_be_hidden()
    expect(page.get_by_test_id("name-submit")).to_be_visible()


def test_shift_and_letters_keep_the_keyboard_open(page: Page, station: Station) -> None:
    # Shift redraws the keys; the redraw must not read as a tap outside the keyboard.
    keyboard = open_name_keyboard(page)
    keyboard.locator('button[data-key="Shift"]').click()
    keyboard.locator('button[data-key="a"]').click()
    keyboard.locator('button[data-key="Backspace"]').click()
    keyboard.locator('button[data-key="Shift"]').click()
    keyboard.locator('button[data-key="b"]').click()
    expect(keyboard).to_be_visible()
    expect(page.get_by_test_id("typed-name")).to_have_value("B")
