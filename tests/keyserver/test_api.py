"""The /v1 API against a real server on both backends: enrollment, registration, key release and its
audit, delivery, revocation, crypto-shredding, and bad input."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import func, select, text, update

from keyserver import audit, db, keks
from keyserver.models import audit_log, enrollment_codes
from keyserver.models import keks as keks_table
from kiosk.sealing import envelope, rncryptor
from kiosk.sealing.sealed_file import read_sealed

from .conftest import KeyServer, bundle_zip


def _audit(ks: KeyServer, **filters: str) -> list[dict]:
    with db.read(ks.engine) as conn:
        return audit.query(conn, **filters)


def _decrypt(path, data_key: bytes) -> bytes:  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        sealed = read_sealed(f)
        f.seek(sealed.payload_offset)
        return rncryptor.decrypt(f.read(sealed.header.payload_size), data_key=data_key)


def test_enroll_returns_token_and_public_keys(ks: KeyServer) -> None:
    code = ks.enrollment_code()
    r = ks.post("/v1/stations/enroll", json={"code": code, "station_id": "ward-3"})
    assert r.status_code == 201
    body = r.json()
    assert body["token"].startswith("kss_")
    keys = [envelope.PublicKek.from_dict(k) for k in body["public_keys"]]
    assert keys[0].fingerprint == ks.public_kek().fingerprint
    assert keys[0].key_server_url == ks.url
    # Replaying the code fails, and the failure is audited.
    again = ks.post("/v1/stations/enroll", json={"code": code, "station_id": "ward-4"})
    assert again.status_code == 403 and again.json()["error"] == "code_reused"
    denied = [r for r in _audit(ks, action="station.enroll") if r["outcome"] == "denied"]
    assert denied and denied[-1]["details"]["reason"] == "code_reused"


def test_expired_and_unknown_codes_are_refused(ks: KeyServer) -> None:
    code = ks.enrollment_code()
    with db.write(ks.engine) as conn:
        conn.execute(update(enrollment_codes).values(expires_at=db.utcnow() - dt.timedelta(seconds=1)))
    r = ks.post("/v1/stations/enroll", json={"code": code, "station_id": "ward-3"})
    assert r.status_code == 403 and r.json()["error"] == "code_expired"
    r = ks.post("/v1/stations/enroll", json={"code": "AAAA-BBBB-CCCC-DDDD", "station_id": "ward-3"})
    assert r.status_code == 403 and r.json()["error"] == "unknown_code"
    r = ks.post("/v1/stations/enroll", json={"code": "x", "station_id": "bad id!"})
    assert r.status_code == 400


def test_reenrollment_needs_a_bound_code_and_revokes_old_token(ks: KeyServer) -> None:
    old = ks.enroll("ward-3")
    r = ks.post("/v1/stations/enroll", json={"code": ks.enrollment_code(), "station_id": "ward-3"})
    assert r.status_code == 409
    r = ks.post("/v1/stations/enroll", json={"code": ks.enrollment_code("ward-3"), "station_id": "ward-3"})
    assert r.status_code == 201
    assert ks.get("/v1/me", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    me = ks.get("/v1/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).json()
    assert me == {"kind": "station", "name": "ward-3", "role": None, "via": "token"}


def test_recipient_unwrap_round_trip_is_audited(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee", email="nurse.lee@clinic.example")
    payload = bundle_zip()
    path, package = ks.seal(
        "r1", station_id="ward-3", recipients=["nurse.lee@clinic.example"], payload=payload
    )
    r = ks.post("/v1/reports", "ward-3", json={"header": package["header"]})
    assert r.status_code == 201 and r.json()["new"] is True
    assert ks.post("/v1/reports", "ward-3", json={"header": package["header"]}).status_code == 200
    r = ks.post("/v1/unwrap", "nurse.lee", json=package)
    assert r.status_code == 200, r.text
    # The answer as the OpenAPI document describes it (written with orjson, not jsonify).
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.json()) == {"report_id", "kek_version", "data_key", "audit_seq"}
    data_key = envelope.b64decode(r.json()["data_key"])
    assert _decrypt(path, data_key) == payload
    report_id = package["header"]["report_id"]
    assert r.json()["report_id"] == report_id and r.json()["kek_version"] == package["header"]["kek_version"]
    records = _audit(ks, report_id=report_id)
    assert [(x["action"], x["outcome"]) for x in records] == [
        ("report.register", "ok"),
        ("key.release", "released"),
    ]
    assert records[1]["actor"] == "user:nurse.lee" and records[1]["seq"] == r.json()["audit_seq"]
    assert records[0]["details"]["station_id"] == "ward-3"


def test_non_recipient_and_auditor_are_denied_and_audited(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    ks.add_user("dr.who")
    ks.add_user("audrey", role="auditor")
    ks.add_user("root", role="admin")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    for who in ("dr.who", "audrey", "root"):
        r = ks.post("/v1/unwrap", who, json=package)
        assert r.status_code == 403, who
        assert "data_key" not in r.json()
    denials = [x for x in _audit(ks, report_id=package["header"]["report_id"]) if x["outcome"] == "denied"]
    assert {x["actor"] for x in denials} == {"user:dr.who", "user:audrey", "user:root"}
    assert all(x["action"] == "key.release" for x in denials)


def test_group_and_grant_policies(ks: KeyServer) -> None:
    from keyserver import users

    ks.add_user("nurse.kim", groups=["wound-care"])
    ks.add_user("dr.ada", role="clinician", groups=["dermatology"])
    with db.write(ks.engine) as conn:
        users.add_grant(
            conn, subject_type="group", subject="dermatology", recipient="wound-care", actor="test"
        )
    _, package = ks.seal("r1", station_id="ward-3", recipients=["wound-care"])
    assert ks.post("/v1/unwrap", "nurse.kim", json=package).status_code == 200
    assert ks.post("/v1/unwrap", "dr.ada", json=package).status_code == 200
    ks.add_user("dr.bob")
    assert ks.post("/v1/unwrap", "dr.bob", json=package).status_code == 403


def test_tampered_header_is_refused_and_audited(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    ks.add_user("mallory")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    forged = json.loads(json.dumps(package))
    forged["header"]["recipients"] = ["mallory"]  # add yourself as a recipient
    r = ks.post("/v1/unwrap", "mallory", json=forged)
    assert r.status_code == 400 and r.json()["error"] == "tampered"
    bad_key = dict(package, wrapped_key=envelope.b64encode(b"\x00" * 112))
    assert ks.post("/v1/unwrap", "nurse.lee", json=bad_key).json()["error"] == "tampered"
    invalid = dict(package, header={**package["header"], "payload_size": -1})
    assert ks.post("/v1/unwrap", "nurse.lee", json=invalid).json()["error"] == "invalid_header"
    reasons = [x["details"]["reason"] for x in _audit(ks) if x["outcome"] == "denied"]
    assert reasons == ["tampered", "tampered", "invalid_header"]


def test_header_differing_from_registration_is_refused(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee")
    _, first = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    assert ks.post("/v1/reports", "ward-3", json={"header": first["header"]}).status_code == 201
    changed = {**first["header"], "recipients": ["nurse.lee", "x"]}
    r = ks.post("/v1/reports", "ward-3", json={"header": changed})
    assert r.status_code == 409
    # Another station cannot register a header naming ward-3.
    ks.enroll("ward-9")
    _, other = ks.seal("r2", station_id="ward-3", recipients=["nurse.lee"])
    assert ks.post("/v1/reports", "ward-9", json={"header": other["header"]}).status_code == 403


def test_delivery_unwrap_only_for_the_sealing_station(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.enroll("ward-9")
    path, package = ks.seal("r1", station_id="ward-3", recipients=[], payload=b"sealed bundle bytes")
    r = ks.post("/v1/delivery/unwrap", "ward-3", json=package)
    assert r.status_code == 200
    assert _decrypt(path, envelope.b64decode(r.json()["data_key"])) == b"sealed bundle bytes"
    r = ks.post("/v1/delivery/unwrap", "ward-9", json=package)
    assert r.status_code == 403 and r.json()["error"] == "not_sealing_station"
    outcomes = [
        (x["actor"], x["action"], x["outcome"]) for x in _audit(ks, report_id=package["header"]["report_id"])
    ]
    assert outcomes == [
        ("station:ward-3", "key.delivery", "released"),
        ("station:ward-9", "key.delivery", "denied"),
    ]


def test_disabled_station_is_refused_and_audited(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("root", role="admin")
    assert ks.post("/v1/stations/ward-3/disable", "root").status_code == 200
    _, package = ks.seal("r1", station_id="ward-3", recipients=[])
    r = ks.post("/v1/delivery/unwrap", "ward-3", json=package)
    assert r.status_code == 403 and r.json()["error"] == "station_disabled"
    assert ks.post("/v1/reports", "ward-3", json={"header": package["header"]}).status_code == 403
    assert ks.post("/v1/inbox", "ward-3", data=b"x").status_code == 403
    denied = [x for x in _audit(ks) if x["outcome"] == "denied"]
    assert {x["action"] for x in denied} == {"key.delivery", "report.register", "inbox.upload"}


def test_revoke_and_restore(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee")
    ks.add_user("root", role="admin")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    report_id = package["header"]["report_id"]
    assert (
        ks.post(f"/v1/reports/{report_id}/revoke", "root", json={"reason": "wrong patient"}).status_code
        == 404
    )
    ks.post("/v1/reports", "ward-3", json={"header": package["header"]})
    assert (
        ks.post(f"/v1/reports/{report_id}/revoke", "root", json={"reason": "wrong patient"}).status_code
        == 200
    )
    r = ks.post("/v1/unwrap", "nurse.lee", json=package)
    assert r.status_code == 403 and r.json()["error"] == "revoked"
    assert ks.post(f"/v1/reports/{report_id}/restore", "root").status_code == 200
    assert ks.post("/v1/unwrap", "nurse.lee", json=package).status_code == 200
    actions = [(x["action"], x["outcome"]) for x in _audit(ks, report_id=report_id)]
    assert actions[1:] == [
        ("report.revoke", "ok"),
        ("key.release", "denied"),
        ("report.restore", "ok"),
        ("key.release", "released"),
    ]


def test_rotation_keeps_old_reports_and_destroy_shreds_them(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    _, old = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    ks.rotate()
    keys = ks.get("/v1/keys").json()
    assert keys["current"] == 2 and [k["version"] for k in keys["keys"]] == [2, 1]
    _, new = ks.seal("r2", station_id="ward-3", recipients=["nurse.lee"])
    assert new["header"]["kek_version"] == 2
    assert ks.post("/v1/unwrap", "nurse.lee", json=old).status_code == 200
    with db.write(ks.engine) as conn, pytest.raises(keks.KekError, match="retention"):
        keks.destroy(conn, 1, actor="test", retention_days=30)
    with db.write(ks.engine) as conn, pytest.raises(keks.KekError, match="retired"):
        keks.destroy(conn, 2, actor="test", retention_days=0)
    with db.write(ks.engine) as conn:
        keks.destroy(conn, 1, actor="test", retention_days=0)
        assert (
            conn.execute(select(keks_table.c.private_key_enc).where(keks_table.c.version == 1)).scalar()
            is None
        )
    r = ks.post("/v1/unwrap", "nurse.lee", json=old)
    assert r.status_code == 410 and r.json()["error"] == "kek_destroyed"
    assert ks.post("/v1/unwrap", "nurse.lee", json=new).status_code == 200
    assert [k["version"] for k in ks.get("/v1/keys").json()["keys"]] == [2]


def test_rotation_due(ks: KeyServer) -> None:
    with db.read(ks.engine) as conn:
        assert not keks.rotation_due(conn, 30)
        assert keks.rotation_due(conn, 30, now=db.utcnow() + dt.timedelta(days=31))


def test_unknown_kek_and_passphrase_headers(ks: KeyServer) -> None:
    ks.add_user("nurse.lee")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    unknown = {**package, "header": {**package["header"], "kek_version": 99}}
    assert ks.post("/v1/unwrap", "nurse.lee", json=unknown).status_code == 404
    header = {
        k: v
        for k, v in package["header"].items()
        if k not in {"key_server_url", "kek_version", "kek_fingerprint", "wrap_algorithm"}
    }
    passphrase = {**package, "header": {**header, "encryption": "passphrase"}}
    assert ks.post("/v1/unwrap", "nurse.lee", json=passphrase).json()["error"] == "not_envelope"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "malformed_json"),
        # Stricter than the standard module (app.RequestJSONProvider): no NaN, no invalid UTF-8.
        (b'{"header": NaN, "wrapped_key": "AAAA"}', "malformed_json"),
        (b'{"header": "\xff", "wrapped_key": "AAAA"}', "malformed_json"),
        (b'{"header": {}, "wrapped_key": "AAAA"', "malformed_json"),
        (b"[1, 2]", "malformed_request"),
        (b'{"header": {}, "wrapped_key": 5}', "malformed_request"),
        (b'{"header": "x", "wrapped_key": "AAAA"}', "invalid_header"),
    ],
)
def test_malformed_requests_get_json_400(ks: KeyServer, body: bytes, error: str) -> None:
    ks.add_user("nurse.lee")
    r = ks.post("/v1/unwrap", "nurse.lee", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == error


def test_anonymous_and_bad_tokens_are_refused_and_audited(ks: KeyServer) -> None:
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    assert ks.post("/v1/unwrap", json=package).status_code == 401
    r = ks.post("/v1/unwrap", json=package, headers={"Authorization": "Bearer ksu_forged"})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    denied = _audit(ks, action="key.release")
    assert [x["actor"] for x in denied] == ["anonymous", "anonymous"]
    assert denied[1]["details"]["bad_token"] is True


def test_oversized_bodies_are_413_json(ks: KeyServer) -> None:
    ks.enroll("ward-3")
    ks.add_user("nurse.lee")
    # Past MAX_CONTENT_LENGTH (the app's limit, 64 MiB by default): refused before the view runs.
    r = ks.post("/v1/unwrap", "nurse.lee", data=b"{" + b" " * (64 * 1024 * 1024 + 1))
    assert r.status_code == 413 and r.json()["error"] == "request_entity_too_large"
    # The inbox also counts while streaming (the configured limit, read per request).
    ks.config.max_upload_mb = 1
    r = ks.post("/v1/inbox", "ward-3", data=b"\0" * (2 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert [x["details"]["reason"] for x in _audit(ks, action="inbox.upload")] == ["too_large"]


def test_internal_error_is_generic_json_and_releases_no_key(ks: KeyServer) -> None:
    """Force a real internal failure: the audit table is gone, so no release can be recorded."""
    ks.add_user("nurse.lee")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    with db.write(ks.engine) as conn:
        conn.execute(text("DROP TABLE audit_log"))
    r = ks.post("/v1/unwrap", "nurse.lee", json=package)
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "message": r.json()["message"]}
    assert "Traceback" not in r.text and "audit_log" not in r.text and "data_key" not in r.text


def test_audit_failure_on_a_registered_report_releases_no_key(ks: KeyServer) -> None:
    """The same on the hot path (PostgreSQL: the batch runs on psycopg in pipeline mode): the report is
    registered, so the release reaches the audit insert itself, which fails; the whole batch rolls back."""
    ks.add_user("nurse.lee")
    _, package = ks.seal("r1", station_id="ward-3", recipients=["nurse.lee"])
    first = ks.post("/v1/unwrap", "nurse.lee", json=package)  # registers the report
    assert first.status_code == 200
    sqlite = ks.engine.dialect.name == "sqlite"
    refuse, allow = (
        (
            "CREATE TRIGGER no_more BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'no'); END",
            "DROP TRIGGER no_more",
        )
        if sqlite
        else (
            "ALTER TABLE audit_log ADD CONSTRAINT no_more CHECK (seq < 0) NOT VALID",
            "ALTER TABLE audit_log DROP CONSTRAINT no_more",
        )
    )
    with db.write(ks.engine) as conn:
        conn.execute(text(refuse))
    r = ks.post("/v1/unwrap", "nurse.lee", json=package)
    assert r.status_code == 500 and "data_key" not in r.text
    with db.read(ks.engine) as conn:
        assert [x["outcome"] for x in audit.query(conn, action="key.release")] == ["released"]
        assert audit.verify(conn).ok  # the chain head did not move either
    with db.write(ks.engine) as conn:
        conn.execute(text(allow))
    r = ks.post("/v1/unwrap", "nurse.lee", json=package)
    assert r.status_code == 200 and r.json()["audit_seq"] == first.json()["audit_seq"] + 1


def test_openapi_lists_every_route(ks: KeyServer) -> None:
    doc = ks.get("/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/unwrap", "/v1/delivery/unwrap", "/v1/inbox", "/v1/audit/export", "/v1/keys"):
        assert path in doc["paths"]
    with db.read(ks.engine) as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar() == 1  # the KEK rotation


def test_concurrent_releases_each_get_their_own_committed_record(ks: KeyServer) -> None:
    """Group commit: many releases at once, one record each, distinct seqs, an intact chain."""
    from concurrent.futures import ThreadPoolExecutor

    ks.add_user("nurse.lee")
    packages = [ks.seal(f"r{i}", station_id="ward-3", recipients=["nurse.lee"])[1] for i in range(6)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(
            pool.map(lambda i: ks.post("/v1/unwrap", "nurse.lee", json=packages[i % 6]), range(36))
        )
    assert [r.status_code for r in responses] == [200] * 36
    seqs = [r.json()["audit_seq"] for r in responses]
    assert len(set(seqs)) == 36
    with db.read(ks.engine) as conn:
        released = [r for r in audit.query(conn, action="key.release") if r["outcome"] == "released"]
        assert sorted(r["seq"] for r in released) == sorted(seqs)
        assert audit.verify(conn).ok
