"""GPIO: capture button (or foot pedal), optional second button, status LED and optional buzzer.

Button callbacks run on gpiozero's threads, so they do nothing but put a small event on a queue; the UI
loop takes events off it and is the only code that touches the camera. A press counts on *release* so that
holding the button can mean "cancel" without first taking a photo.

gpiozero's `bounce_time` filters contact bounce in the pin driver, but drivers differ (and the mock pins
used in tests simulate none), so `EventFilter` also drops a repeat of the same event within `min_interval`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class GpioUnavailable(RuntimeError):
    """GPIO pins could not be opened (not a Pi, pin in use, no permission); the message is for a person."""


class GpioConfig(BaseModel):
    """`[gpio]` in kiosk.toml. Pin numbers are BCM (GPIO) numbers, not physical pin positions."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    capture_pin: int | None = Field(17, ge=0, le=27, description="capture button or foot pedal")
    second_pin: int | None = Field(None, ge=0, le=27, description="optional second action (e.g. next step)")
    led_pin: int | None = Field(22, ge=0, le=27, description="status LED (through a resistor)")
    buzzer_pin: int | None = Field(None, ge=0, le=27, description="optional active buzzer")
    pull_up: bool = Field(True, description="buttons connect the pin to ground (internal pull-up)")
    bounce_time: float | None = Field(0.02, ge=0, le=1, description="driver debounce, seconds")
    min_interval: float = Field(0.4, ge=0, le=5, description="ignore a repeat of the same event sooner")
    hold_time: float = Field(1.5, gt=0, le=10, description="hold the capture button this long to cancel")


class EventKind(StrEnum):
    CAPTURE = "capture"
    SECOND = "second"
    CANCEL = "cancel"


@dataclass(frozen=True)
class ButtonEvent:
    kind: EventKind
    at: float  # time.monotonic() when the button acted


class EventFilter:
    """Software debounce: accept an event unless the same kind was accepted within `min_interval`."""

    def __init__(self, min_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self._clock = clock
        self._last: dict[EventKind, float] = {}
        self._lock = threading.Lock()  # callbacks for different pins may run on different threads

    def accept(self, kind: EventKind) -> ButtonEvent | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.min_interval:
                return None
            self._last[kind] = now
        return ButtonEvent(kind, now)


class LedState(StrEnum):
    OFF = "off"
    READY = "ready"
    BUSY = "busy"
    ERROR = "error"
    OUTBOX_STUCK = "outbox-stuck"


# (on seconds, off seconds); None = steady. Chosen to be told apart at a glance across a room:
# steady = ready, fast flicker = working, even slow blink = error, a short flash every 2 s = outbox stuck.
LED_PATTERNS: dict[LedState, tuple[float, float] | None] = {
    LedState.READY: None,
    LedState.BUSY: (0.1, 0.1),
    LedState.ERROR: (0.5, 0.5),
    LedState.OUTBOX_STUCK: (0.15, 1.85),
}


class Gpio:
    """Owns the pins. `events` is the queue the UI drains; `set_status` drives the LED."""

    def __init__(
        self,
        config: GpioConfig,
        events: queue.Queue[ButtonEvent] | None = None,
        pin_factory: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.events: queue.Queue[ButtonEvent] = events if events is not None else queue.Queue(maxsize=64)
        self.status = LedState.OFF
        self._filter = EventFilter(config.min_interval, clock)
        self._held = False
        self._devices: list[Any] = []
        try:
            self._open(pin_factory)
        except Exception as exc:  # gpiozero raises many types (BadPinFactory, PinInvalidPin, GPIOPinInUse...)
            self.close()
            raise GpioUnavailable(f"GPIO is not available: {exc}") from exc

    def _open(self, pin_factory: Any) -> None:
        from gpiozero import LED, Button, Buzzer  # lazily: only stations with buttons need gpiozero

        cfg = self.config
        self.capture = self.second = self.led = self.buzzer = None
        if cfg.capture_pin is not None:
            self.capture = self._add(
                Button(
                    cfg.capture_pin,
                    pull_up=cfg.pull_up,
                    bounce_time=cfg.bounce_time or None,
                    hold_time=cfg.hold_time,
                    pin_factory=pin_factory,
                )
            )
            self.capture.when_pressed = self._capture_pressed
            self.capture.when_held = self._capture_held
            self.capture.when_released = self._capture_released
        if cfg.second_pin is not None:
            self.second = self._add(
                Button(
                    cfg.second_pin,
                    pull_up=cfg.pull_up,
                    bounce_time=cfg.bounce_time or None,
                    pin_factory=pin_factory,
                )
            )
            self.second.when_pressed = lambda: self._emit(EventKind.SECOND)
        if cfg.led_pin is not None:
            self.led = self._add(LED(cfg.led_pin, pin_factory=pin_factory))
        if cfg.buzzer_pin is not None:
            self.buzzer = self._add(Buzzer(cfg.buzzer_pin, pin_factory=pin_factory))

    def _add(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    def _emit(self, kind: EventKind) -> None:
        event = self._filter.accept(kind)
        if event is None:
            return
        # nobody draining (UI busy or gone): dropping the event beats blocking a GPIO thread
        with contextlib.suppress(queue.Full):
            self.events.put_nowait(event)

    def _capture_pressed(self) -> None:
        self._held = False

    def _capture_held(self) -> None:
        self._held = True
        self._emit(EventKind.CANCEL)

    def _capture_released(self) -> None:
        if not self._held:
            self._emit(EventKind.CAPTURE)
        self._held = False

    def set_status(self, state: LedState) -> None:
        self.status = state
        if self.led is None:
            return
        pattern = LED_PATTERNS.get(state)
        if state is LedState.OFF:
            self.led.off()
        elif pattern is None:
            self.led.on()
        else:
            self.led.blink(on_time=pattern[0], off_time=pattern[1], background=True)

    def beep(self, ok: bool = True) -> None:
        """One short beep for a photo taken or a code read; three for an error."""
        if self.buzzer is not None:
            self.buzzer.beep(on_time=0.08, off_time=0.08, n=1 if ok else 3, background=True)

    def close(self) -> None:
        for device in self._devices:
            device.close()
        self._devices.clear()

    def __enter__(self) -> Gpio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
