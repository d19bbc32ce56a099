"""The background worker, dropping deliveries, and the station's hash-chained audit."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiosk.cli import main
from kiosk.destinations.folder import FolderConfig, FolderDestination
from kiosk.outbox import worker as worker_module
from kiosk.outbox.store import Outbox
from kiosk.outbox.worker import OutboxWorker, status
from tests.test_outbox import _seal_into


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_worker_delivers_what_is_queued_while_it_runs(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    destination = FolderDestination(FolderConfig(name="share", type="folder", path=tmp_path / "share"))
    seen = []
    worker = OutboxWorker(tmp_path / "data", {"share": destination}, on_status=seen.append)
    worker.start()
    outbox = Outbox(tmp_path / "data")
    try:
        ids = []
        for _ in range(3):
            report_id = str(uuid.uuid4())
            path, header = _seal_into(outbox, report_id)
            outbox.enqueue(report_id, {path: header}, {"share": path})
            worker.wake()
            ids.append(report_id)
        _wait_for(lambda: sorted(p.stem for p in (tmp_path / "share").iterdir()) == sorted(ids))
        _wait_for(lambda: list(outbox.folder.iterdir()) == [])
        _wait_for(lambda: bool(seen) and seen[-1].pending == 0)
        assert not seen[-1].stuck
    finally:
        worker.stop()
        outbox.close()


def test_status_reports_a_stuck_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = Outbox(tmp_path / "data")
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    outbox.enqueue(report_id, {path: header}, {"share": path})
    assert not status(outbox).stuck
    later = time.time() + worker_module.STUCK_AFTER_SECONDS + 1
    assert status(outbox, now=later).stuck
    outbox.mark_failed(outbox.deliveries()[0], "bad password", permanent=True)
    current = status(outbox)
    assert current.failed == 1 and current.stuck
    outbox.close()


def _station(tmp_path: Path) -> Path:
    config = tmp_path / "kiosk.toml"
    config.write_text(
        f'[station]\nid = "s1"\ndata_dir = "{tmp_path / "data"}"\n\n[keyserver]\nurl = "https://k.test"\n\n'
        f'[[destination]]\nname = "usb"\ntype = "folder"\npath = "{tmp_path / "usb"}"\n'
    )
    return config


def test_drop_needs_confirmation_is_audited_and_wipes(tmp_path: Path) -> None:
    config = _station(tmp_path)
    outbox = Outbox(tmp_path / "data")
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    outbox.enqueue(report_id, {path: header}, {"usb": path})
    outbox.close()
    runner = CliRunner()

    refused = runner.invoke(
        main, ["--config", str(config), "outbox", "drop", report_id, "--by", "it-admin"], input="n\n"
    )
    assert refused.exit_code == 1
    assert path.exists()

    dropped = runner.invoke(
        main, ["--config", str(config), "outbox", "drop", report_id, "--by", "it-admin", "--yes"]
    )
    assert dropped.exit_code == 0, dropped.output
    assert not path.exists()
    audit = runner.invoke(main, ["--config", str(config), "outbox", "audit"])
    assert audit.exit_code == 0
    assert "dropped" in audit.output and "it-admin" in audit.output and "audit chain intact" in audit.output
    assert (
        runner.invoke(main, ["--config", str(config), "outbox", "list"]).output.strip()
        == "the outbox is empty"
    )


def test_audit_chain_records_the_life_of_a_report_and_detects_tampering(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    outbox = Outbox(tmp_path / "data")
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    outbox.enqueue(report_id, {path: header}, {"share": path})
    from kiosk.outbox.sender import deliver_due

    deliver_due(
        outbox,
        {"share": FolderDestination(FolderConfig(name="share", type="folder", path=tmp_path / "share"))},
    )
    events = [(r.event, r.report_id) for r in outbox.audit_records()]
    assert events == [("queued", report_id), ("delivered", report_id), ("wiped", report_id)]
    assert outbox.verify_audit() == []
    outbox.close()

    db = sqlite3.connect(tmp_path / "data" / "outbox.sqlite")
    db.execute("UPDATE audit SET event = 'nothing' WHERE seq = 2")
    db.commit()
    reopened = Outbox(tmp_path / "data")
    assert reopened.verify_audit() == ["record 2 was altered"]
    reopened.close()
    db.execute("UPDATE audit SET event = 'delivered' WHERE seq = 2")
    db.execute("DELETE FROM audit WHERE seq = 2")
    db.commit()
    reopened = Outbox(tmp_path / "data")
    problems = reopened.verify_audit()
    assert "record 2 is missing (next is 3)" in problems
    assert "record 3 does not follow the record before it" in problems
    reopened.close()
