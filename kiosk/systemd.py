"""sd_notify for `Type=notify` + `WatchdogSec=` units, standard library only.

The station's unit (deploy/pi/kiosk.service) is `Type=notify` with a watchdog. The touchscreen app calls:

    systemd.notify_ready()                       # once it listens: systemd then starts Chromium's wait loop
    systemd.start_watchdog(healthy=callable)     # a daemon thread running watchdog_loop()
    systemd.notify_stopping()                    # on shutdown (optional)

`healthy()` should prove the process still does its job (e.g. the request loop answered recently); while it
returns False no ping is sent, so systemd kills and restarts the service after `WatchdogSec`. Outside systemd
($NOTIFY_SOCKET unset) every call is a cheap no-op, so the app, tests and `make demo` need no special case.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify datagram ("READY=1", "WATCHDOG=1", ...). False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("ignoring NOTIFY_SOCKET %r (not a unix socket path)", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False
    return True


def notify_ready(status: str | None = None) -> bool:
    """Tell systemd the service is up (it listens); with a status line for `systemctl status`."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def notify_status(status: str) -> bool:
    return notify(f"STATUS={status}")


def notify_watchdog() -> bool:
    return notify("WATCHDOG=1")


def notify_stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WatchdogSec), or None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def watchdog_loop(
    healthy: Callable[[], bool] | None = None,
    stop: threading.Event | None = None,
    interval: float | None = None,
) -> None:
    """Ping the watchdog every `interval` (default: half of WatchdogSec) while `healthy()` is true.

    Returns at once when no watchdog is configured; otherwise runs until `stop` is set.
    """
    interval = interval or watchdog_interval()
    if interval is None:
        return
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            ok = healthy() if healthy is not None else True
        except Exception:  # a failing health probe means "not healthy", never a dead watchdog thread
            log.exception("watchdog health probe failed")
            ok = False
        if ok:
            notify_watchdog()
        else:
            log.warning("not pinging the systemd watchdog: the health probe failed")
        stop.wait(interval)


def start_watchdog(
    healthy: Callable[[], bool] | None = None, stop: threading.Event | None = None
) -> threading.Thread | None:
    """Run watchdog_loop() in a daemon thread; None (and no thread) when there is no watchdog."""
    if watchdog_interval() is None:
        return None
    thread = threading.Thread(
        target=watchdog_loop, kwargs={"healthy": healthy, "stop": stop}, name="systemd-watchdog", daemon=True
    )
    thread.start()
    return thread
