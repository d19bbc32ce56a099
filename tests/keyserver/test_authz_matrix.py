"""The authorisation matrix: every /v1 endpoint and page × every kind of caller, on both backends.

Users call /v1 with API tokens and pages with real signed-in sessions (login form, cookie, CSRF token);
stations always present their token. One server per backend serves the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import BACKENDS, PASSWORD, KeyServer, make_config, new_database, start_server, stop_server
from .web import login

ACTORS = ["anonymous", "station", "disabled_station", "recipient", "other_clinician", "auditor", "admin"]
USERS = {"recipient": "nurse.lee", "other_clinician": "dr.who", "auditor": "audrey", "admin": "root"}

A, S, D, R, O, U, M = ACTORS  # noqa: E741 (one letter per actor keeps the table readable)
OK = 200

# (name, method, path, body kind, {actor: expected status}); a missing actor means "the default" given last.
TABLE: list[tuple[str, str, str, str, dict[str, int], int]] = [
    ("keys", "GET", "/v1/keys", "", {}, OK),
    ("readyz", "GET", "/readyz", "", {}, OK),  # monitoring: open to all, reveals no key, user or report
    ("openapi", "GET", "/v1/openapi.json", "", {}, OK),
    ("me", "GET", "/v1/me", "", {A: 401, D: 403}, OK),
    ("enroll", "POST", "/v1/stations/enroll", "bad_code", {}, 403),
    ("register", "POST", "/v1/reports", "register", {A: 401, S: 200}, 403),
    ("report_info", "GET", "/v1/reports/{info}", "", {A: 401, U: OK, M: OK}, 403),
    ("revoke", "POST", "/v1/reports/{revocable}/revoke", "json", {A: 401, M: OK}, 403),
    ("restore", "POST", "/v1/reports/{revocable}/restore", "json", {A: 401, M: OK}, 403),
    ("unwrap", "POST", "/v1/unwrap", "unwrap", {A: 401, R: OK}, 403),
    ("delivery", "POST", "/v1/delivery/unwrap", "unwrap", {A: 401, S: OK}, 403),
    ("inbox_upload", "POST", "/v1/inbox", "sealed", {A: 401, S: OK}, 403),
    ("inbox_list", "GET", "/v1/inbox", "", {A: 401, R: OK, O: OK, M: OK}, 403),
    ("inbox_file", "GET", "/v1/inbox/{inbox}/file", "", {A: 401, R: OK}, 403),
    ("audit", "GET", "/v1/audit", "", {A: 401, U: OK, M: OK}, 403),
    ("audit_export", "GET", "/v1/audit/export?format=csv", "", {A: 401, U: OK, M: OK}, 403),
    ("audit_verify", "GET", "/v1/audit/verify", "", {A: 401, U: OK, M: OK}, 403),
    ("stations", "GET", "/v1/stations", "", {A: 401, M: OK}, 403),
    ("station_disable", "POST", "/v1/stations/victim/disable", "json", {A: 401, M: OK}, 403),
    ("enrollment_code", "POST", "/v1/enrollment-codes", "json", {A: 401, M: 201}, 403),
    ("station_audit_ship", "POST", "/v1/stations/audit", "audit_batch", {A: 401, S: OK}, 403),
    ("station_audit", "GET", "/v1/stations/victim/audit", "", {A: 401, U: OK, M: OK}, 403),
    ("station_audit_chains", "GET", "/v1/stations/victim/audit/chains", "", {A: 401, U: OK, M: OK}, 403),
    ("station_audit_verify", "GET", "/v1/stations/victim/audit/verify", "", {A: 401, U: OK, M: OK}, 403),
    # Pages: anonymous visitors and stations are sent to the login page.
    ("page_inbox", "GET", "/inbox", "", {A: 302, S: 302, D: 302, U: 403}, OK),
    ("page_report", "GET", "/reports/{inbox}", "", {A: 302, S: 302, D: 302, R: OK}, 403),
    ("page_open", "GET", "/open", "", {A: 302, S: 302, D: 302, U: 403}, OK),
    ("page_admin", "GET", "/admin", "", {A: 302, S: 302, D: 302, M: OK}, 403),
    ("page_admin_code", "POST", "/admin/enrollment-codes", "form", {A: 302, S: 302, D: 302, M: OK}, 403),
    ("page_audit", "GET", "/audit", "", {A: 302, S: 302, D: 302, U: OK, M: OK}, 403),
    ("page_station_audit", "GET", "/audit/stations", "", {A: 302, S: 302, D: 302, U: OK, M: OK}, 403),
    (
        "page_station_trail",
        "GET",
        "/audit/stations?station=victim",
        "",
        {A: 302, S: 302, D: 302, U: OK, M: OK},
        403,
    ),
]


class Matrix:
    def __init__(self, ks: KeyServer) -> None:
        self.ks = ks
        self.sessions: dict[str, tuple[requests.Session, str]] = {}
        ks.enroll("st-1")
        ks.enroll("st-2")
        ks.enroll("victim")
        for user, role, email in (
            ("nurse.lee", "clinician", "lee@x.example"),
            ("dr.who", "clinician", None),
            ("audrey", "auditor", None),
            ("root", "admin", None),
        ):
            ks.add_user(user, role=role, email=email)
            self.sessions[user] = login(ks.url, user, PASSWORD)
        self.sealed_path, self.package = ks.seal("unwrap", station_id="st-1", recipients=["lee@x.example"])
        self.inbox_path, inbox_package = ks.seal("inbox", station_id="st-1", recipients=["nurse.lee"])
        assert ks.post("/v1/inbox", "st-1", data=self.inbox_path.read_bytes()).status_code == 201
        _, revocable = ks.seal("revocable", station_id="st-1", recipients=["nurse.lee"])
        assert ks.post("/v1/reports", "st-1", json={"header": revocable["header"]}).status_code == 201
        self.ids = {
            "info": inbox_package["header"]["report_id"],
            "inbox": inbox_package["header"]["report_id"],
            "revocable": revocable["header"]["report_id"],
        }
        # Disable st-2 last: its token still exists, but the station may do nothing.
        assert ks.post("/v1/stations/st-2/disable", "root").status_code == 200

    def call(self, actor: str, method: str, path: str, body: str) -> requests.Response:
        url = self.ks.url + path.format(**self.ids)
        kwargs: dict[str, Any] = {"allow_redirects": False, "timeout": 30, "headers": {}}
        if body == "bad_code":
            kwargs["json"] = {"code": "AAAA-BBBB-CCCC-DDDD", "station_id": "nobody"}
        elif body == "register":
            kwargs["json"] = {"header": self.package["header"]}
        elif body == "unwrap":
            kwargs["json"] = self.package
        elif body == "sealed":
            kwargs["data"] = self.inbox_path.read_bytes()
        elif body == "json":
            kwargs["json"] = {}
        elif body == "audit_batch":
            # Asks where the server's copy of one of the station's chains ends.
            kwargs["json"] = {"chain": "a" * 64, "records": []}
        page = not path.startswith("/v1")
        token = {"station": "st-1", "disabled_station": "st-2"}.get(actor) or USERS.get(actor)
        if actor in USERS and page:
            session, csrf = self.sessions[USERS[actor]]
            if body == "form":
                kwargs["data"] = {"csrf_token": csrf}
            return session.request(method, url, **kwargs)
        if token:
            kwargs["headers"]["Authorization"] = f"Bearer {self.ks.tokens[token]}"
        return requests.request(method, url, **kwargs)


@pytest.fixture(scope="module", params=BACKENDS)
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    directory: Path = tmp_path_factory.mktemp(f"matrix-{request.param}")
    config = make_config(directory, new_database(request.param, request, directory))
    ks, server = start_server(config)
    ks.rotate()
    yield Matrix(ks)
    stop_server(server)
    ks.engine.dispose()


CASES = [
    pytest.param(name, method, path, body, actor, expected.get(actor, default), id=f"{name}-{actor}")
    for name, method, path, body, expected, default in TABLE
    for actor in ACTORS
]


@pytest.mark.parametrize(("name", "method", "path", "body", "actor", "expected"), CASES)
def test_authorisation(
    matrix: Matrix, name: str, method: str, path: str, body: str, actor: str, expected: int
) -> None:
    response = matrix.call(actor, method, path, body)
    if name in ("register", "inbox_upload") and expected == OK:
        assert response.status_code in (200, 201), response.text  # idempotent: new or already there
    else:
        assert response.status_code == expected, response.text[:300]
    if path.startswith("/v1") and response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/json")
        assert set(response.json()) == {"error", "message"}
    if response.status_code == 302:
        assert "/login" in response.headers["Location"]
    if name == "unwrap" and expected == OK:
        assert len(response.json()["data_key"]) == 86  # 64 bytes, base64url without padding


def test_every_route_is_in_the_matrix(matrix: Matrix) -> None:
    from flask import Flask

    from keyserver.app import create_app

    app: Flask = create_app(matrix.ks.config)
    covered = {(m, p.split("?")[0]) for _, m, p, _, _, _ in TABLE}
    placeholders = {
        "{info}": "<report_id>",
        "{inbox}": "<report_id>",
        "{revocable}": "<report_id>",
        "victim": "<station_id>",
    }
    normalized = set()
    for method, path in covered:
        for k, v in placeholders.items():
            path = path.replace(k, v)
        normalized.add((method, path))
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/static", "/healthz", "/login", "/logout")) or rule.rule == "/":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
            if (method, rule.rule) not in normalized:
                missing.append((method, rule.rule))
    # The remaining admin form posts share the same guard as /admin/enrollment-codes.
    allowed_extra = {
        "/admin/stations/<station_id>/disable",
        "/admin/users",
        "/admin/users/<username>/disable",
        "/admin/users/<username>/enable",
        "/admin/users/<username>/unlock",
        "/admin/users/<username>/totp",
        "/admin/grants",
        "/admin/grants/<int:grant_id>/remove",
        "/admin/reports",
    }
    assert [m for m in missing if m[1] not in allowed_extra] == []


def test_cookie_session_needs_csrf_on_api_posts(matrix: Matrix) -> None:
    session, csrf = matrix.sessions["nurse.lee"]
    url = f"{matrix.ks.url}/v1/unwrap"
    r = session.post(url, json=matrix.package, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = session.post(url, json=matrix.package, headers={"X-CSRF-Token": "wrong"}, timeout=10)
    assert r.status_code == 403
    r = session.post(url, json=matrix.package, headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 200
    assert r.json()["report_id"] == matrix.package["header"]["report_id"]


def test_admin_form_posts_are_guarded(matrix: Matrix) -> None:
    for path, data in (
        ("/admin/users", {"username": "eve", "password": "x" * 12, "role": "admin"}),
        ("/admin/users/root/disable", {}),
        ("/admin/users/root/enable", {}),
        ("/admin/users/root/unlock", {}),
        ("/admin/users/root/totp", {"action": "remove"}),
        ("/admin/grants", {"subject_type": "role", "subject": "clinician", "recipient": "*"}),
        ("/admin/grants/1/remove", {}),
        ("/admin/stations/st-1/disable", {}),
        ("/admin/reports", {"report_id": matrix.ids["revocable"]}),
    ):
        session, csrf = matrix.sessions["dr.who"]
        r = session.post(
            matrix.ks.url + path, data={**data, "csrf_token": csrf}, allow_redirects=False, timeout=10
        )
        assert r.status_code == 403, path
        session, _ = matrix.sessions["root"]
        r = session.post(matrix.ks.url + path, data=data, allow_redirects=False, timeout=10)
        assert r.status_code == 403 and "CSRF" in r.text, path  # admin, but no CSRF token
