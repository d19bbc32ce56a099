"""The background sender: delivers due reports while the station is in use.

It owns its own Outbox connection and wakes when a report is queued (``wake()``) or when the next retry
falls due. The station starts one at boot; `kiosk outbox run` runs one in the foreground.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kiosk.destinations.base import Destination
from kiosk.outbox.sender import deliver_due
from kiosk.outbox.store import ABANDONED_AFTER_SECONDS, Outbox

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 30.0
STUCK_AFTER_SECONDS = 15 * 60.0


@dataclass(frozen=True)
class OutboxStatus:
    pending: int
    failed: int
    oldest_age_seconds: float

    @property
    def stuck(self) -> bool:
        """Something needs a person: a permanent failure, or a report waiting too long."""
        return self.failed > 0 or self.oldest_age_seconds > STUCK_AFTER_SECONDS


def status(outbox: Outbox, now: float | None = None) -> OutboxStatus:
    now = time.time() if now is None else now
    waiting = outbox.deliveries(states=("pending", "sending", "failed"))
    oldest = min((d.queued_at for d in waiting), default=now)
    failed = sum(1 for d in waiting if d.state == "failed")
    return OutboxStatus(pending=len(waiting) - failed, failed=failed, oldest_age_seconds=now - oldest)


class OutboxWorker:
    def __init__(
        self,
        data_dir: Path,
        destinations: Mapping[str, Destination],
        *,
        on_status: Callable[[OutboxStatus], None] | None = None,
        abandoned_after_seconds: float = ABANDONED_AFTER_SECONDS,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        """`after_round` runs on this thread after every round (the station ships its audit trail there)."""
        self._data_dir = data_dir
        self._destinations = destinations
        self._on_status = on_status
        self._abandoned_after = abandoned_after_seconds
        self._after_round = after_round
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Recover from a crash (synchronously, so the caller serves nothing before it), then deliver."""
        outbox = Outbox(self._data_dir)
        try:
            outbox.recover()
        finally:
            outbox.close()
        self._thread = threading.Thread(target=self._run, name="outbox-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        outbox = Outbox(self._data_dir)
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before the round, so a wake() during it is not lost
                try:
                    deliver_due(outbox, self._destinations)
                    outbox.remove_abandoned(self._abandoned_after)
                    current = status(outbox)
                    if self._on_status is not None:
                        self._on_status(current)
                    self._run_after_round()
                    self._wake.wait(self._next_wait(outbox))
                except Exception:  # keep delivering whatever one bad round did
                    log.exception("outbox round failed")
                    self._wake.wait(5.0)
        finally:
            outbox.close()

    def _run_after_round(self) -> None:
        if self._after_round is None:
            return
        try:
            self._after_round()
        except Exception:  # the hook's trouble must not cost a delivery round
            log.exception("outbox after-round hook failed")

    @staticmethod
    def _next_wait(outbox: Outbox) -> float:
        pending = outbox.deliveries(states=("pending",))
        if not pending:
            return IDLE_POLL_SECONDS
        return max(0.05, min(IDLE_POLL_SECONDS, min(d.next_attempt for d in pending) - time.time()))
