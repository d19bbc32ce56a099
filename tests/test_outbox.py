"""The outbox: durable queueing, delivery to a real folder, retries, recovery and the wipe."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from kiosk.destinations.base import Parcel
from kiosk.destinations.folder import FolderConfig, FolderDestination
from kiosk.outbox import sender
from kiosk.outbox.store import Outbox
from kiosk.sealing.sealed_file import SealedHeader, read_sealed
from tests.factories import seal_placeholder


def _seal_into(outbox: Outbox, report_id: str) -> tuple[Path, SealedHeader]:
    path = outbox.sealed_path(report_id, 1)
    return path, seal_placeholder(path, report_id)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    store = Outbox(tmp_path / "data")
    yield store
    store.close()


def _folder(tmp_path: Path, name: str = "share") -> FolderDestination:
    target = tmp_path / name
    target.mkdir(exist_ok=True)
    return FolderDestination(FolderConfig(name=name, type="folder", path=target))


def test_delivered_everywhere_then_wiped(outbox: Outbox, tmp_path: Path) -> None:
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    original = path.read_bytes()
    destinations = {"share": _folder(tmp_path, "share"), "usb": _folder(tmp_path, "usb")}
    outbox.enqueue(report_id, {path: header}, {"share": path, "usb": path})

    assert sender.drain(outbox, destinations, timeout=5)
    for name in ("share", "usb"):
        delivered = tmp_path / name / f"{report_id}.cpseal"
        assert delivered.read_bytes() == original
        assert read_sealed(io.BytesIO(delivered.read_bytes())).header == header
    assert not path.exists(), "the sealed file must be wiped once every destination confirmed"
    assert list(outbox.folder.iterdir()) == []
    states = {d.destination: d for d in outbox.deliveries()}
    assert {d.state for d in states.values()} == {"delivered"}
    assert all(d.receipt and "sha256:" in d.receipt for d in states.values())


def test_a_destination_that_is_down_keeps_the_file_until_it_comes_back(
    outbox: Outbox, tmp_path: Path
) -> None:
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    up = _folder(tmp_path, "share")
    down = FolderDestination(FolderConfig(name="usb", type="folder", path=tmp_path / "not-mounted"))
    outbox.enqueue(report_id, {path: header}, {"share": path, "usb": path})

    assert not sender.drain(outbox, {"share": up, "usb": down}, timeout=0)
    assert path.exists(), "one destination has not confirmed, so the report stays"
    failed = next(d for d in outbox.deliveries() if d.destination == "usb")
    assert failed.state == "pending"
    assert failed.attempts == 1
    assert "not available" in (failed.last_error or "")
    assert failed.next_attempt > failed.queued_at

    (tmp_path / "not-mounted").mkdir()
    assert outbox.retry(report_id) == 1
    assert sender.drain(outbox, {"share": up, "usb": down}, timeout=5)
    assert (tmp_path / "not-mounted" / f"{report_id}.cpseal").exists()
    assert not path.exists()


def test_recovery_resumes_interrupted_sends_and_drops_unqueued_files(outbox: Outbox, tmp_path: Path) -> None:
    queued_id, orphan_id = str(uuid.uuid4()), str(uuid.uuid4())
    path, header = _seal_into(outbox, queued_id)
    outbox.enqueue(queued_id, {path: header}, {"share": path})
    outbox.mark_sending(outbox.deliveries()[0])  # then the station lost power
    orphan, _ = _seal_into(outbox, orphan_id)  # sealed, but the crash came before enqueue
    (outbox.folder / ".x.cpseal.partial").write_bytes(b"half a file")

    outbox.recover()
    assert orphan.exists(), "too young: it may be a Send in progress in another process"
    assert outbox.remove_abandoned(grace_seconds=0) == 2

    assert not orphan.exists()
    assert not (outbox.folder / ".x.cpseal.partial").exists()
    assert [d.state for d in outbox.deliveries()] == ["pending"]
    assert sender.drain(outbox, {"share": _folder(tmp_path)}, timeout=5)


def test_redelivery_after_a_crash_does_not_duplicate(outbox: Outbox, tmp_path: Path) -> None:
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    destination = _folder(tmp_path)
    outbox.enqueue(report_id, {path: header}, {"share": path})
    delivery = outbox.deliveries()[0]
    destination.deliver(Parcel(report_id, path, header))  # delivered, but never recorded
    outbox.mark_sending(delivery)
    outbox.recover()
    assert sender.drain(outbox, {"share": destination}, timeout=5)
    assert sorted(p.name for p in (tmp_path / "share").iterdir()) == [f"{report_id}.cpseal"]
    assert "already there" in (outbox.deliveries()[0].receipt or "")


def test_a_removed_destination_is_reported_not_dropped(outbox: Outbox) -> None:
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    outbox.enqueue(report_id, {path: header}, {"gone": path})
    sender.deliver_due(outbox, {})
    (delivery,) = outbox.deliveries()
    assert delivery.state == "failed"
    assert "no longer configured" in (delivery.last_error or "")
    assert path.exists()


def test_the_queue_survives_reopening(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "data")
    report_id = str(uuid.uuid4())
    path, header = _seal_into(first, report_id)
    first.enqueue(report_id, {path: header}, {"share": path})
    first.close()
    second = Outbox(tmp_path / "data")
    try:
        assert [d.report_id for d in second.due()] == [report_id]
        assert second.header(path) == header
    finally:
        second.close()
