"""GPIO with gpiozero's MockFactory: button events on the queue, hold-to-cancel, debounce, LED patterns."""

from __future__ import annotations

import queue
import time

import pytest
from gpiozero.pins.mock import MockFactory

from kiosk.hardware.gpio import (
    LED_PATTERNS,
    ButtonEvent,
    EventFilter,
    EventKind,
    Gpio,
    GpioConfig,
    LedState,
)

CAPTURE, SECOND, LED, BUZZER = 17, 27, 22, 23


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture
def gpio(factory):
    config = GpioConfig(
        capture_pin=CAPTURE,
        second_pin=SECOND,
        led_pin=LED,
        buzzer_pin=BUZZER,
        bounce_time=None,  # the mock simulates no bounce; our own filter is under test
        min_interval=0.2,
        hold_time=0.1,
    )
    with Gpio(config, pin_factory=factory) as gpio:
        yield gpio


def drain(events: queue.Queue[ButtonEvent], wait: float = 0.05) -> list[EventKind]:
    time.sleep(wait)
    kinds = []
    while not events.empty():
        kinds.append(events.get_nowait().kind)
    return kinds


def test_press_and_release_queues_one_capture(gpio, factory) -> None:
    pin = factory.pin(CAPTURE)
    pin.drive_low()
    assert drain(gpio.events) == []  # a press counts on release, so that holding can mean cancel
    pin.drive_high()
    assert drain(gpio.events) == [EventKind.CAPTURE]


def test_hold_cancels_instead_of_capturing(gpio, factory) -> None:
    pin = factory.pin(CAPTURE)
    pin.drive_low()
    time.sleep(0.3)  # past hold_time
    pin.drive_high()
    assert drain(gpio.events) == [EventKind.CANCEL]


def test_second_button(gpio, factory) -> None:
    factory.pin(SECOND).drive_low()
    factory.pin(SECOND).drive_high()
    assert drain(gpio.events) == [EventKind.SECOND]


def test_contact_bounce_gives_one_event(gpio, factory) -> None:
    pin = factory.pin(CAPTURE)
    for _ in range(6):  # a bouncing contact: a burst of edges within a few ms
        pin.drive_low()
        pin.drive_high()
    assert drain(gpio.events) == [EventKind.CAPTURE]
    time.sleep(0.25)  # after min_interval a real second press counts
    pin.drive_low()
    pin.drive_high()
    assert drain(gpio.events) == [EventKind.CAPTURE]


def test_event_filter_per_kind_with_a_clock() -> None:
    now = [100.0]
    events = EventFilter(0.4, clock=lambda: now[0])
    assert events.accept(EventKind.CAPTURE) == ButtonEvent(EventKind.CAPTURE, 100.0)
    now[0] = 100.1
    assert events.accept(EventKind.CAPTURE) is None
    assert events.accept(EventKind.SECOND) is not None  # other kinds are independent
    now[0] = 100.41
    assert events.accept(EventKind.CAPTURE) is not None


def test_full_queue_drops_rather_than_blocks(factory) -> None:
    events: queue.Queue[ButtonEvent] = queue.Queue(maxsize=1)
    config = GpioConfig(capture_pin=CAPTURE, led_pin=None, bounce_time=None, min_interval=0)
    with Gpio(config, events=events, pin_factory=factory):
        for _ in range(3):
            factory.pin(CAPTURE).drive_low()
            factory.pin(CAPTURE).drive_high()
    assert events.qsize() == 1


def transitions(pin, seconds: float) -> list[tuple[float, bool]]:
    pin.clear_states()
    time.sleep(seconds)
    return [(s.timestamp, bool(s.state)) for s in pin.states[1:]]


def test_led_patterns_are_distinct_and_driven(gpio, factory) -> None:
    assert len(set(LED_PATTERNS.values())) == len(LED_PATTERNS)
    led = factory.pin(LED)
    gpio.set_status(LedState.READY)
    assert led.state and gpio.status is LedState.READY
    assert transitions(led, 0.2) == []  # steady

    gpio.set_status(LedState.BUSY)  # 0.1 s on / 0.1 s off
    busy = transitions(led, 0.55)
    assert len(busy) >= 4
    assert all(0.05 < dt < 0.2 for dt, _ in busy[1:])

    gpio.set_status(LedState.OUTBOX_STUCK)  # short flash, long dark
    stuck = transitions(led, 0.5)
    assert len(stuck) <= 3  # at most on, off, (on) within half a second
    gpio.set_status(LedState.OFF)
    time.sleep(0.05)
    assert not led.state


def test_buzzer_beeps(gpio, factory) -> None:
    buzzer = factory.pin(BUZZER)
    buzzer.clear_states()
    gpio.beep(ok=False)
    time.sleep(0.6)
    assert [bool(s.state) for s in buzzer.states[1:]] == [True, False] * 3


def test_unusable_pin_is_a_plain_error(factory) -> None:
    from kiosk.hardware.gpio import GpioUnavailable

    with pytest.raises(GpioUnavailable, match="GPIO is not available"):
        Gpio(GpioConfig(capture_pin=17, led_pin=17), pin_factory=factory)  # same pin twice
