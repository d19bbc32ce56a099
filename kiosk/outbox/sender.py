"""Moves due deliveries from the outbox to their destinations.

Only sealed files pass through here; error texts come from transports and carry no patient data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from kiosk.destinations.base import DeliveryError, Destination, Parcel
from kiosk.outbox.store import Outbox

log = logging.getLogger(__name__)


def deliver_due(outbox: Outbox, destinations: Mapping[str, Destination], now: float | None = None) -> int:
    """Attempt every due delivery once; return how many succeeded."""
    delivered = 0
    for delivery in outbox.due(now):
        destination = destinations.get(delivery.destination)
        if destination is None or delivery.sealed_path is None:
            outbox.mark_failed(delivery, "destination is no longer configured", permanent=True)
            continue
        outbox.mark_sending(delivery)
        parcel = Parcel(
            delivery.report_id,
            delivery.sealed_path,
            outbox.header(delivery.sealed_path),
            params=delivery.params,  # stored with the delivery: every attempt gets the same choices
        )
        try:
            receipt = destination.deliver(parcel)
        except DeliveryError as exc:
            outbox.mark_failed(delivery, str(exc), permanent=exc.permanent)
        except Exception as exc:  # a transport bug must not stop the other deliveries
            log.exception("destination %s raised unexpectedly", delivery.destination)
            outbox.mark_failed(delivery, f"unexpected error ({type(exc).__name__})")
        else:
            outbox.mark_delivered(delivery, receipt)
            delivered += 1
    outbox.release_finished()
    return delivered


def drain(
    outbox: Outbox, destinations: Mapping[str, Destination], *, timeout: float, report_id: str | None = None
) -> bool:
    """Deliver until nothing is pending or ``timeout`` passes; True when everything was delivered."""
    deadline = time.monotonic() + timeout

    def mine(states: tuple[str, ...]) -> list:
        return [d for d in outbox.deliveries(states=states) if report_id in (None, d.report_id)]

    while True:
        deliver_due(outbox, destinations)
        waiting = mine(("pending", "sending"))
        if not waiting or time.monotonic() >= deadline:
            return not waiting and not mine(("failed",))
        soonest = min(d.next_attempt for d in waiting) - time.time()
        time.sleep(max(0.05, min(soonest, deadline - time.monotonic(), 1.0)))
