"""Per-delivery parameters in the outbox: stored with the delivery, given to the destination on every
attempt, checked by the pipeline, and added to outbox.sqlite files made before the column existed."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiosk import config as config_module
from kiosk.cli import main
from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.destinations.folder import FolderConfig, FolderDestination
from kiosk.outbox import sender
from kiosk.outbox.store import Outbox
from kiosk.pipeline import PhotoInput, SealError, assemble_report, seal_and_queue
from kiosk.report.model import Patient, Report, Staff, Station
from kiosk.sealing.sealed_file import SealedHeader
from tests.factories import folder_station_toml, make_jpeg, sample_consent, seal_placeholder

# outbox.sqlite as the first release created it: no `params` column.
OLD_SCHEMA = """
CREATE TABLE sealed_file (path TEXT PRIMARY KEY, report_id TEXT NOT NULL, header TEXT NOT NULL);
CREATE TABLE delivery (
    report_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    sealed_path TEXT REFERENCES sealed_file(path),
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'dropped')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    receipt TEXT,
    last_error TEXT,
    queued_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (report_id, destination)
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, event TEXT NOT NULL, report_id TEXT, actor TEXT NOT NULL,
    details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
"""


def _seal_into(outbox_dir: Path, report_id: str) -> tuple[Path, SealedHeader]:
    path = outbox_dir / f"{report_id}.1.cpseal"
    return path, seal_placeholder(path, report_id)


def _old_database(data_dir: Path) -> tuple[str, Path]:
    """An outbox from before the column, holding one pending delivery of a real sealed file."""
    (data_dir / "outbox").mkdir(parents=True)
    report_id = str(uuid.uuid4())
    path, header = _seal_into(data_dir / "outbox", report_id)
    db = sqlite3.connect(data_dir / "outbox.sqlite")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO sealed_file VALUES (?, ?, ?)", (str(path), report_id, header.model_dump_json()))
    db.execute(
        "INSERT INTO delivery (report_id, destination, sealed_path, state, queued_at, updated_at)"
        " VALUES (?, 'share', ?, 'pending', 1, 1)",
        (report_id, str(path)),
    )
    db.commit()
    db.close()
    return report_id, path


def _folder(tmp_path: Path, name: str = "share") -> FolderDestination:
    (tmp_path / name).mkdir(exist_ok=True)
    return FolderDestination(FolderConfig(name=name, type="folder", path=tmp_path / name))


def _columns(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "outbox.sqlite") as db:
        return [row[1] for row in db.execute("PRAGMA table_info(delivery)")]


def test_an_old_outbox_is_migrated_and_its_deliveries_still_go(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    report_id, path = _old_database(data_dir)
    assert "params" not in _columns(data_dir)

    outbox = Outbox(data_dir)
    try:
        assert "params" in _columns(data_dir)
        (old,) = outbox.deliveries()
        assert old.params == {} and old.recipient_count is None
        assert sender.drain(outbox, {"share": _folder(tmp_path)}, timeout=5)
        assert (tmp_path / "share" / f"{report_id}.cpseal").exists()
        assert not path.exists(), "wiped after delivery, as before"

        # new deliveries in the migrated file carry parameters
        new_id = str(uuid.uuid4())
        new_path, header = _seal_into(outbox.folder, new_id)
        outbox.enqueue(new_id, {new_path: header}, {"share": new_path}, {"share": {"note": "x"}})
        assert [d.params for d in outbox.deliveries(states=("pending",))] == [{"note": "x"}]
        assert outbox.verify_audit() == []
    finally:
        outbox.close()
    Outbox(data_dir).close()  # opening a migrated file again changes nothing
    assert _columns(data_dir).count("params") == 1


def test_processes_opening_an_old_outbox_together_add_the_column_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _old_database(data_dir)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        start.wait()
        try:
            Outbox(data_dir).close()  # its own connection, like the worker or `kiosk send`
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _columns(data_dir).count("params") == 1


class _Recording(Destination):
    """A real (in-process) destination that fails once, then accepts, keeping every parcel it saw."""

    type_name = "recording"

    def __init__(self) -> None:
        super().__init__(FolderConfig(name="rec", type="folder", path=Path("/nonexistent")))
        self.parcels: list[Parcel] = []

    def deliver(self, parcel: Parcel) -> str:
        self.parcels.append(parcel)
        if len(self.parcels) == 1:
            raise DeliveryError("first attempt fails")
        return "ok"


def test_the_sender_gives_every_attempt_the_stored_params(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    try:
        report_id = str(uuid.uuid4())
        path, header = _seal_into(outbox.folder, report_id)
        recording, share = _Recording(), _folder(tmp_path)
        params = {"rec": {"to": ["a@clinic.test", "b@clinic.test"]}}
        outbox.enqueue(report_id, {path: header}, {"rec": path, "share": path}, params)
        outbox.close()
        outbox = Outbox(tmp_path / "data")  # from the database, not from memory

        sender.deliver_due(outbox, {"rec": recording, "share": share})
        outbox.retry(report_id)
        sender.deliver_due(outbox, {"rec": recording, "share": share})
        assert [dict(p.params) for p in recording.parcels] == [params["rec"]] * 2
        assert {d.destination: d.state for d in outbox.deliveries()} == {
            "rec": "delivered",
            "share": "delivered",
        }
        assert {d.destination: d.recipient_count for d in outbox.deliveries()} == {"rec": 2, "share": None}
    finally:
        outbox.close()


def test_params_must_name_queued_destinations(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    try:
        report_id = str(uuid.uuid4())
        path, header = _seal_into(outbox.folder, report_id)
        with pytest.raises(ValueError, match="not queued: usb"):
            outbox.enqueue(report_id, {path: header}, {"share": path}, {"usb": {"x": 1}})
        assert outbox.deliveries() == []
    finally:
        outbox.close()


# --- the pipeline checks what it queues -------------------------------------------------------------
@pytest.fixture
def config(tmp_path: Path) -> config_module.Config:
    text, _ = folder_station_toml(
        tmp_path,
        f"""
[[destination]]
name = "mail"
type = "email"
host = "127.0.0.1"
security = "none"
from = "kiosk@clinic.test"
encryption = "passphrase"
passphrase_file = "{tmp_path / "share.key"}"
ask_recipients = true
allowed_domains = ["clinic.test"]
""",
    )
    path = tmp_path / "kiosk.toml"
    path.write_text(text)
    return config_module.load(path)


def _report() -> Report:
    return assemble_report(
        station=Station(id="wound-clinic-1", software_version="0.1.0"),
        staff=Staff(id="RN-1", name="Alex Nurse"),
        patient=Patient(mrn="MRN0012345", name="Jamie Rivera"),
        consent=sample_consent(),
        photos=[PhotoInput(data=make_jpeg(320, 240), name="a.jpg")],
    )


def test_the_pipeline_queues_checked_recipients(config: config_module.Config) -> None:
    outbox = Outbox(config.station.data_dir)
    try:
        chosen: list[DestinationConfigBase] = list(config.destination)
        seal_and_queue(_report(), chosen, config, outbox, {"mail": {"to": ["A.Nurse@Clinic.test"] * 2}})
        params = {d.destination: d.params for d in outbox.deliveries()}
        assert params == {"share": {}, "mail": {"to": ["A.Nurse@Clinic.test"]}}
    finally:
        outbox.close()


def test_outbox_list_counts_recipients_without_naming_them(config: config_module.Config) -> None:
    outbox = Outbox(config.station.data_dir)
    try:
        chosen = {"mail": {"to": ["a.nurse@clinic.test", "wound.team@clinic.test"]}}
        seal_and_queue(_report(), list(config.destination), config, outbox, chosen)
    finally:
        outbox.close()
    assert config.source is not None
    listing = CliRunner().invoke(main, ["--config", str(config.source), "outbox", "list"])
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[1]: line for line in listing.output.splitlines()}
    assert set(lines) == {"share", "mail"}
    assert "recipients=2" in lines["mail"] and "recipients=" not in lines["share"]
    assert "@" not in listing.output and "nurse" not in listing.output and "team" not in listing.output


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (None, "choose at least one email recipient"),  # `kiosk send`: nothing preselected
        ({"mail": {"to": []}}, "choose at least one email recipient"),
        ({"mail": {"to": ["x@elsewhere.test"]}}, "outside the allowed recipients"),
        (
            {"share": {"to": ["a@clinic.test"]}, "mail": {"to": ["a@clinic.test"]}},
            "takes no delivery parameters",
        ),
        ({"usb": {"to": []}, "mail": {"to": ["a@clinic.test"]}}, "not chosen: usb"),
    ],
)
def test_the_pipeline_refuses_before_sealing(
    config: config_module.Config, params: dict[str, dict[str, object]] | None, message: str
) -> None:
    outbox = Outbox(config.station.data_dir)
    try:
        with pytest.raises(SealError, match=message):
            seal_and_queue(_report(), list(config.destination), config, outbox, params)
        assert outbox.deliveries() == []
        assert list(outbox.folder.iterdir()) == [], "nothing sealed"
    finally:
        outbox.close()
