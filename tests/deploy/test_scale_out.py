"""Scale-out: two key server instances on one PostgreSQL database keep no state in process memory.

Instance A is `keyserver serve` (waitress); instance B is gunicorn started with the exact command line of
deploy/keyserver/keyserver.service. Both get the master secret the way systemd hands it over
($CREDENTIALS_DIRECTORY/keyserver-master) and, where the kernel has it, run under PR_SET_MDWE (what the
units' MemoryDenyWriteExecute=yes enforces). A session and tokens made on one instance work on the other,
a report registered on one unwraps on the other, and concurrent unwraps on both leave one intact audit
chain with exactly one record per request.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select, text

from keyserver import db
from keyserver.models import audit_log
from kiosk import keyserver_client
from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import decrypt_payload, read_sealed
from tests.keyserver.conftest import PASSWORD, bundle_zip, package_of, seal
from tests.keyserver.pg import Cluster, free_port, pg_bin

from .conftest import REPO

BIN = Path(sys.executable).parent
CONCURRENT_UNWRAPS = 24


def _mdwe_prefix() -> str:
    release = os.uname().release.split(".")
    if (int(release[0]), int(release[1].split("-")[0])) < (6, 3):
        return ""
    return "import ctypes; assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0; "


def unit_exec_start() -> list[str]:
    """ExecStart= of keyserver.service (continuation lines joined), with its environment defaults."""
    lines = (REPO / "deploy/keyserver/keyserver.service").read_text().replace("\\\n", " ").splitlines()
    command = next(line for line in lines if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    return shlex.split(command)


@dataclass
class Instance:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, **kwargs: object) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


@dataclass
class Deployment:
    config: Path
    env: dict[str, str]
    database_url: str
    a: Instance
    b: Instance

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "keyserver"), *args], capture_output=True, text=True, timeout=60, env=self.env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def _start(name: str, code: str, argv: list[str], port: int, env: dict[str, str]) -> Instance:
    process = subprocess.Popen(
        [sys.executable, "-c", _mdwe_prefix() + code, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Instance(name, url, process)
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or workers still booting
        assert time.monotonic() < deadline, f"{name} did not start"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    cluster = Cluster()
    directory = tmp_path_factory.mktemp("scale-out")
    instances: list[Instance] = []
    try:
        admin = db.make_engine(cluster.url())
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("CREATE DATABASE keyserver"))
        admin.dispose()
        database_url = cluster.url("keyserver")
        credentials = directory / "credentials"
        credentials.mkdir(mode=0o700)
        (credentials / "keyserver-master").write_text(uuid.uuid4().hex * 2)
        config = directory / "keyserver.toml"
        config.write_text(
            f'data_dir = "data"\ndatabase_url = "{database_url}"\nallow_generated_master_secret = false\n'
            'public_base_url = "https://keys.clinic.test"\ninbox_dir = "inbox"\n'
        )
        env = {**os.environ, "KEYSERVER_CONFIG": str(config), "CREDENTIALS_DIRECTORY": str(credentials)}
        env.pop("KEYSERVER_MASTER_SECRET", None)
        port_a, port_b = free_port(), free_port()
        deploy = Deployment(config, env, database_url, None, None)  # type: ignore[arg-type]
        deploy.cli("db", "upgrade")  # what ExecStartPre= does
        deploy.cli("kek", "rotate", "--if-due")  # what install.sh does for the first KEK
        deploy.a = a = _start(
            "keyserver serve",
            "import sys; from keyserver.cli import main; sys.argv[0] = 'keyserver'; main()",
            ["serve", "--port", str(port_a), "--threads", "8"],
            port_a,
            env,
        )
        instances.append(a)
        unit_env = {
            "KEYSERVER_BIND": f"127.0.0.1:{port_b}",
            "KEYSERVER_WORKERS": "2",
            "KEYSERVER_THREADS": "4",
        }
        argv = unit_exec_start()
        for key, value in unit_env.items():
            argv = [arg.replace("${" + key + "}", value) for arg in argv]
        assert argv[0] == "/opt/keyserver/venv/bin/gunicorn" and argv[-1] == "keyserver.wsgi:app"
        deploy.b = b = _start(
            "gunicorn",
            "import sys; from gunicorn.app.wsgiapp import run; sys.argv[0] = 'gunicorn'; run()",
            argv[1:],
            port_b,
            env,
        )
        instances.append(b)
        yield deploy
    finally:
        for instance in instances:
            instance.process.terminate()
            instance.process.wait(15)
        cluster.stop()


def _decrypt(path: Path, data_key: bytes) -> bytes:
    with open(path, "rb") as handle:
        sealed = read_sealed(handle)
        out = io.BytesIO()
        decrypt_payload(handle, sealed, out, data_key=data_key)
    return out.getvalue()


def test_two_instances_share_everything_through_postgresql(deployment: Deployment, tmp_path: Path) -> None:
    a, b = deployment.a, deployment.b
    password = tmp_path / "pw"
    password.write_text(PASSWORD + "\n")
    deployment.cli("user", "add", "nurse.lee", "--role", "clinician", "--password-file", str(password))

    # A browser session made on A is valid on B.
    csrf = "login-" + uuid.uuid4().hex
    login = a.post(
        "/login",
        cookies={"ks_login_csrf": csrf},
        data={"username": "nurse.lee", "password": PASSWORD, "csrf_token": csrf},
        allow_redirects=False,
    )
    assert login.status_code in (302, 303), login.text
    session = {"ks_session": login.cookies["ks_session"]}
    me = b.get("/v1/me", cookies=session)
    assert me.status_code == 200 and me.json()["name"] == "nurse.lee"

    # A station enrolls on A; its token, the keys and the report registration work on B.
    code = deployment.cli("station", "enroll-code").strip()
    credentials = keyserver_client.enroll(a.url, code, "ward-7")
    station_b = keyserver_client.StationClient(b.url, credentials["token"], "ward-7")
    kek = station_b.fetch_public_keys()[0]
    payload = bundle_zip(os.urandom(4096))
    sealed_path = tmp_path / "report.cpseal"
    header = seal(sealed_path, kek, station_id="ward-7", recipients=["nurse.lee"], payload=payload)
    package = package_of(sealed_path)
    assert station_b.register_report(header)["report_id"] == header.report_id

    # A user token made on A (API) unwraps on B, and B's delivery unwrap honours A's station token.
    user_token = deployment.cli("token", "create", "nurse.lee").strip()
    data_key = keyserver_client.unwrap(b.url, user_token, package["header"], package["wrapped_key"])
    assert _decrypt(sealed_path, data_key) == payload
    assert (
        _decrypt(sealed_path, station_b.delivery_unwrap(package["header"], package["wrapped_key"])) == payload
    )

    # Concurrent unwraps on both instances: every one succeeds and is audited exactly once, in one chain.
    def unwrap(i: int) -> int:
        instance = a if i % 2 else b
        answer = instance.post("/v1/unwrap", json=package, headers={"Authorization": f"Bearer {user_token}"})
        assert answer.status_code == 200, answer.text
        assert envelope.b64decode(answer.json()["data_key"]) == data_key
        return int(answer.json()["audit_seq"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        seqs = list(pool.map(unwrap, range(CONCURRENT_UNWRAPS)))
    assert len(set(seqs)) == CONCURRENT_UNWRAPS  # no two requests got the same audit record

    engine = db.make_engine(deployment.database_url)
    try:
        with engine.connect() as conn:
            releases = conn.execute(
                select(func.count())
                .select_from(audit_log)
                .where(audit_log.c.report_id == header.report_id, audit_log.c.action == "key.release")
            ).scalar()
            total = conn.execute(select(func.count()).select_from(audit_log)).scalar()
    finally:
        engine.dispose()
    assert releases == CONCURRENT_UNWRAPS + 1  # the concurrent ones and the first, on B
    verified = deployment.cli("audit", "verify")
    assert f"{total} records" in verified and "audit chain intact" in verified
