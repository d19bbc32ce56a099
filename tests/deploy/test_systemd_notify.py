"""kiosk.systemd speaks the sd_notify protocol to a real unix datagram socket, as systemd does."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from kiosk import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_status_and_stopping(notify_socket: socket.socket) -> None:
    assert systemd.notify_ready("listening on 127.0.0.1:8080")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:8080"
    assert systemd.notify_stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"kiosk-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify_watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.notify_ready() is False
    assert systemd.watchdog_interval() is None
    assert systemd.start_watchdog() is None
    systemd.watchdog_loop()  # returns at once


def test_watchdog_pings_only_while_healthy(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # WatchdogSec=0.1 → a ping every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == pytest.approx(0.05)
    healthy = threading.Event()
    healthy.set()
    stop = threading.Event()
    thread = systemd.start_watchdog(healthy.is_set, stop)
    assert thread is not None
    assert notify_socket.recv(64) == b"WATCHDOG=1"
    healthy.clear()
    notify_socket.settimeout(0.3)
    while True:  # drain pings sent before the switch; then silence
        try:
            notify_socket.recv(64)
        except TimeoutError:
            break
    stop.set()
    thread.join(2)
    assert not thread.is_alive()


def test_watchdog_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None
