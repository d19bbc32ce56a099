"""Fixtures: both database backends (real SQLite and a real throwaway PostgreSQL), and a real key server
(the Flask app under waitress on a free 127.0.0.1 port) with helpers to make users, stations and reports."""

from __future__ import annotations

import io
import itertools
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, text
from werkzeug.serving import make_server

from keyserver import db, keks, stations, users
from keyserver.app import create_app
from keyserver.config import Config
from keyserver.masterkey import MasterKey, load_master_key
from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import EnvelopeSealer, SealedHeader, write_sealed

from .pg import Cluster

PASSWORD = "correct horse battery staple"
BACKENDS = ["sqlite", "postgresql"]
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    engine = db.make_engine(cluster.url())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CREATE DATABASE ks_template"))
    engine.dispose()
    template = db.make_engine(cluster.url("ks_template"))
    db.upgrade(template)
    template.dispose()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    return path


def new_database(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """A fresh, migrated database: a copy of the SQLite template, or a PostgreSQL clone of the template."""
    if backend == "sqlite":
        target = directory / "keyserver.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    name = f"ks_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(cluster.url())
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE ks_template STRATEGY FILE_COPY"))
    admin.dispose()
    return cluster.url(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_database(backend, request, tmp_path)


def make_config(directory: Path, database_url: str, **overrides: Any) -> Config:
    secret = directory / "master.secret"
    if not secret.exists():
        secret.write_text("test-master-secret-" + uuid.uuid4().hex + uuid.uuid4().hex)
    values: dict[str, Any] = {
        "data_dir": directory,
        "database_url": database_url,
        "master_secret_file": secret,
        "allow_generated_master_secret": False,
    }
    values.update(overrides)
    return Config(**values)


def bundle_zip(photo: bytes = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9") -> bytes:
    """A minimal report bundle that kiosk.report.bundle.read_bundle accepts (no patient data needed)."""
    out = io.BytesIO()
    report = {
        "photos": [{"file": "photos/photo-01.jpg", "sha256": __import__("hashlib").sha256(photo).hexdigest()}]
    }
    with zipfile.ZipFile(out, "w") as bundle:
        bundle.writestr("report.json", envelope.canonical_json(report))
        bundle.writestr("report.xml", "<report/>")
        bundle.writestr("report.pdf", b"%PDF-1.4\n%%EOF\n")
        bundle.writestr("photos/photo-01.jpg", photo)
    return out.getvalue()


def seal(
    path: Path,
    kek: envelope.PublicKek,
    *,
    station_id: str,
    recipients: list[str],
    payload: bytes | None = None,
) -> SealedHeader:
    data = payload if payload is not None else bundle_zip()
    with open(path, "wb") as out:
        return write_sealed(
            out,
            lambda sink: sink.write(data),
            EnvelopeSealer(kek),
            report_id=str(uuid.uuid4()),
            station_id=station_id,
            created_at="2026-01-02T03:04:05Z",
            recipients=recipients,
        )


def package_of(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as container:
        import json

        return json.loads(container.read("package.json"))  # type: ignore[no-any-return]


@dataclass
class KeyServer:
    """A running key server and shortcuts that act directly on its database (setup only)."""

    url: str
    config: Config
    engine: Engine
    master: MasterKey
    directory: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def rotate(self) -> int:
        with db.write(self.engine) as conn:
            return keks.rotate(conn, self.master, actor="test")

    def public_kek(self) -> envelope.PublicKek:
        with db.read(self.engine) as conn:
            return keks.public_keys(conn, self.url)[0]

    def add_user(
        self, name: str, role: str = "clinician", email: str | None = None, groups: list[str] | None = None
    ) -> str:
        with db.write(self.engine) as conn:
            users.add_user(
                conn,
                username=name,
                password=PASSWORD,
                role=role,
                email=email,
                actor="test",
                group_names=groups,
            )
            token = users.create_token(conn, name, actor="test")
        self.tokens[name] = token
        return token

    def enrollment_code(self, station_id: str | None = None, minutes: int = 15) -> str:
        with db.write(self.engine) as conn:
            return stations.create_code(conn, actor="test", minutes=minutes, station_id=station_id)[0]

    def enroll(self, station_id: str) -> str:
        code = self.enrollment_code()
        r = requests.post(
            f"{self.url}/v1/stations/enroll", json={"code": code, "station_id": station_id}, timeout=10
        )
        assert r.status_code == 201, r.text
        self.tokens[station_id] = r.json()["token"]
        return str(r.json()["token"])

    def seal(
        self, name: str, *, station_id: str, recipients: list[str], payload: bytes | None = None
    ) -> tuple[Path, dict[str, Any]]:
        path = self.directory / f"{name}.cpseal"
        seal(path, self.public_kek(), station_id=station_id, recipients=recipients, payload=payload)
        return path, package_of(path)

    def post(self, path: str, who: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return requests.post(f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def get(self, path: str, who: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if who:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return requests.get(f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


def start_server(config: Config) -> tuple[KeyServer, Any]:
    app = create_app(config)
    # In-process tests use werkzeug's threaded server (clean shutdown); the real-process suite uses waitress.
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    config.public_base_url = url
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state = app.extensions["keyserver"]
    return KeyServer(url, config, state.engine, state.master, config.data_dir), server


@pytest.fixture
def ks(db_url: str, tmp_path: Path) -> Iterator[KeyServer]:
    config = make_config(tmp_path, db_url)
    server_state, server = start_server(config)
    server_state.rotate()
    yield server_state
    stop_server(server)
    server_state.engine.dispose()


def stop_server(server: Any) -> None:
    server.shutdown()
    server.server_close()


def master_of(config: Config) -> MasterKey:
    return load_master_key(config)
