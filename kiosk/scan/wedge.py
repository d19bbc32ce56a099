"""USB keyboard-wedge scanners: tell a scanner's burst of keystrokes from a person typing.

A wedge scanner "types" its payload far faster than a person (a few ms between keys) and ends with Enter.
This is the reference logic; the UI runs the same rules in JavaScript (contract in docs/hardware.md):

- a burst starts at the first key and collects printable keys,
- a gap longer than `max_gap` (30 ms) before a key means what came before was typed: start a new burst
  with that key (so stray typing before a scan does not spoil it),
- Enter ends the burst; it is a scan if it came within `max_gap` and the burst has >= `min_length` chars,
- the scan text goes through payload.parse_payload like a camera decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiosk.scan.payload import Identity, ScanRule, parse_payload

MAX_GAP = 0.030  # seconds; people rarely type two keys < 50 ms apart, scanners send every few ms
MIN_LENGTH = 4
ENTER = "Enter"


@dataclass
class WedgeScan:
    text: str = field(repr=False)
    identity: Identity | None


class WedgeDetector:
    """Feed key events (key name as a browser reports it, timestamp in seconds); get a scan on Enter."""

    def __init__(
        self, max_gap: float = MAX_GAP, min_length: int = MIN_LENGTH, rules: tuple[ScanRule, ...] = ()
    ):
        self.max_gap = max_gap
        self.min_length = min_length
        self.rules = rules
        self._chars: list[str] = []
        self._last: float | None = None

    def reset(self) -> None:
        self._chars, self._last = [], None

    def feed(self, key: str, at: float) -> WedgeScan | None:
        slow = self._last is not None and at - self._last > self.max_gap
        if slow:
            self._chars = []  # everything so far was typed by a person
        self._last = at
        if key == ENTER:
            text = "".join(self._chars)
            self.reset()
            if slow or len(text) < self.min_length:
                return None
            return WedgeScan(text, parse_payload(text, rules=self.rules))
        if key in ("GroupSeparator", "\x1d"):  # some scanners send GS as its own key
            self._chars.append("\x1d")
        elif len(key) == 1:
            self._chars.append(key)
        return None


def classify(keys: list[tuple[str, float]], max_gap: float = MAX_GAP, min_length: int = MIN_LENGTH) -> str:
    """'scanner' or 'typing' for a whole key sequence ending with Enter."""
    detector = WedgeDetector(max_gap, min_length)
    results = [detector.feed(k, t) for k, t in keys]
    return "scanner" if results and results[-1] is not None else "typing"
