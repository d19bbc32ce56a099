"""The inbox on both backends: validation, idempotent uploads, conflicts, listing, download, retention."""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import func, select

from keyserver import db, inbox
from keyserver.models import inbox_files

from .conftest import KeyServer


def test_upload_is_validated_idempotent_and_listed(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee", groups=["wound-care"])
    ks.add_user("dr.who")
    path, package = ks.seal("r1", station_id="ward-3", recipients=["wound-care"])
    data = path.read_bytes()
    first = ks.post("/v1/inbox", "ward-3", data=data)
    assert first.status_code == 201
    receipt = first.json()
    assert receipt["sha256"] == hashlib.sha256(data).hexdigest() and receipt["size"] == len(data)
    again = ks.post("/v1/inbox", "ward-3", data=data)
    assert again.status_code == 200 and again.json() == receipt
    stored = ks.config.effective_inbox_dir / f"{package['header']['report_id']}.cpseal"
    assert stored.read_bytes() == data
    listing = ks.get("/v1/inbox", "nurse.lee").json()["reports"]
    assert [r["report_id"] for r in listing] == [package["header"]["report_id"]]
    assert ks.get("/v1/inbox", "dr.who").json()["reports"] == []
    r = ks.get(f"/v1/inbox/{package['header']['report_id']}/file", "nurse.lee")
    assert r.status_code == 200 and r.content == data
    assert ks.get(f"/v1/inbox/{package['header']['report_id']}/file", "dr.who").status_code == 403


def test_different_bytes_for_an_existing_report_is_409(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    path, _ = ks.seal("r1", station_id="ward-3", recipients=[])
    assert ks.post("/v1/inbox", "ward-3", data=path.read_bytes()).status_code == 201
    # Same report id, different bytes: rebuild the container with another zip layout (extra comment).
    import zipfile

    other = path.with_name("other.cpseal")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.comment = b"re-packed"
    r = ks.post("/v1/inbox", "ward-3", data=other.read_bytes())
    assert r.status_code == 409 and r.json()["error"] == "conflict"


def test_invalid_files_are_refused_and_nothing_is_stored(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.enroll("ward-9")
    path, _ = ks.seal("r1", station_id="ward-3", recipients=[])
    data = bytearray(path.read_bytes())
    data[200] ^= 1  # flip a payload bit: the header's payload HMAC no longer matches
    for body in (b"not a zip", bytes(data), path.read_bytes()[:-30]):
        r = ks.post("/v1/inbox", "ward-3", data=body)
        assert r.status_code == 400 and r.json()["error"] == "invalid_sealed_file", r.text
    # A station cannot upload another station's report.
    r = ks.post("/v1/inbox", "ward-9", data=path.read_bytes())
    assert r.status_code == 403 and r.json()["error"] == "station_mismatch"
    assert [p.name for p in ks.config.effective_inbox_dir.iterdir()] == []
    with db.read(ks.engine) as conn:
        assert conn.execute(select(func.count()).select_from(inbox_files)).scalar() == 0


def test_retention_purge(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee")
    path, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    assert ks.post("/v1/inbox", "ward-3", data=path.read_bytes()).status_code == 201
    inbox_dir = ks.config.effective_inbox_dir
    assert inbox.purge(ks.engine, inbox_dir, actor="test") == 0
    later = db.utcnow() + dt.timedelta(days=ks.config.inbox_retention_days, seconds=1)
    assert inbox.purge(ks.engine, inbox_dir, actor="test", now=later) == 1
    assert list(inbox_dir.glob("*.cpseal")) == []
    assert ks.get("/v1/inbox", "nurse.lee").json()["reports"] == []
    r = ks.get(f"/v1/inbox/{package['header']['report_id']}/file", "nurse.lee")
    assert r.status_code == 404
    # The report itself stays registered: a copy elsewhere still opens.
    assert ks.post("/v1/unwrap", "nurse.lee", json=package).status_code == 200
