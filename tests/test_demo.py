"""`make demo` (kiosk/demo.py) as a user runs it: the key server and the station answer, the demo report is
in the inbox, and SIGTERM stops the demo and both servers (as Ctrl-C does)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from keyserver import audit, db
from keyserver.config import load_config
from keyserver.models import inbox_files, reports
from tests.net import free_port

ROOT = Path(__file__).resolve().parent.parent


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


def _read_until(process: subprocess.Popen[str], marker: str, seconds: float) -> str:
    assert process.stdout is not None
    deadline, lines = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    pytest.fail("the demo did not get to its URLs:\n" + "".join(lines))


def test_demo_serves_both_apps_with_a_report_in_the_inbox_and_stops_on_sigterm(tmp_path: Path) -> None:
    keyserver_port, station_port = free_port(), free_port()
    demo_dir = tmp_path / "demo-data"
    env = {
        **os.environ,
        "KIOSK_DEMO_DIR": str(demo_dir),
        "KIOSK_DEMO_KEYSERVER_PORT": str(keyserver_port),
        "KIOSK_DEMO_STATION_PORT": str(station_port),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kiosk.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the cleanup below reaches the servers too
    )
    try:
        output = _read_until(process, "send from the CLI", 180)
        assert f"station (touchscreen) http://127.0.0.1:{station_port}/" in output
        assert f"key server and inbox  http://127.0.0.1:{keyserver_port}/" in output
        assert "clinician           nurse.lee / " in output
        assert "is in the key server inbox" in output
        assert _status(f"http://127.0.0.1:{keyserver_port}/healthz") == 200
        assert _status(f"http://127.0.0.1:{station_port}/") == 200

        # The demo report reached the inbox sealed and registered, and the audit chain verifies.
        engine = db.engine_for(load_config(demo_dir / "keyserver" / "keyserver.toml"))
        try:
            with db.read(engine) as conn:
                assert conn.execute(select(func.count()).select_from(inbox_files)).scalar() == 1
                assert conn.execute(select(func.count()).select_from(reports)).scalar() == 1
                assert audit.verify(conn).ok
        finally:
            engine.dispose()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        for port in (keyserver_port, station_port):  # both servers stopped with the demo
            with pytest.raises(OSError):
                _status(f"http://127.0.0.1:{port}/healthz")
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left after a failure
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
