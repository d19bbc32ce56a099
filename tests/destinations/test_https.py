"""The "https" destination against the reference receiver (deploy/reference-receiver), over real TLS."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from kiosk.destinations import registry
from kiosk.destinations.base import DeliveryError
from kiosk.destinations.https import HttpsConfig, HttpsDestination
from kiosk.outbox import sender
from kiosk.outbox.store import Outbox
from kiosk.report.bundle import read_bundle
from kiosk.sealing import passphrase
from kiosk.sealing.sealed_file import decrypt_payload, read_sealed
from tests.destinations.conftest import (
    PATIENT_MRN,
    PATIENT_NAME,
    SealedParcel,
    TlsFiles,
    enqueue,
    free_port,
    sealed_parcel,
    secret_file,
    wait_for_port,
)

RECEIVER_SCRIPT = Path(__file__).parents[2] / "deploy" / "reference-receiver" / "receiver.py"
TOKEN = "tok-9d2f61c0b7e84a5f"
USER, PASSWORD = "clinic-upload", "pw-4c1e8a9b33"


def _load_receiver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_receiver", RECEIVER_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


receiver_module = _load_receiver()


class Running:
    """A reference receiver serving in a thread of this process (so tests can use its hooks)."""

    def __init__(self, store: Path, tls: TlsFiles | None, port: int = 0) -> None:
        self.store = store
        self.server = receiver_module.ReceiverServer(
            ("127.0.0.1", port),
            store,
            tls=tls.server_context() if tls else None,
            tokens=[TOKEN],
            users={USER: PASSWORD},
        )
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/reports"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def stored(self, report_id: str) -> list[Path]:
        return sorted(self.store.glob(f"{report_id}*"))


@pytest.fixture(scope="module")
def receiver(tls_ca: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = Running(tmp_path_factory.mktemp("received"), tls_ca)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return secret_file(tmp_path_factory.mktemp("secrets") / "token", TOKEN)


def _https(
    receiver: Running, tls_ca: TlsFiles, token: Path | None, made: SealedParcel, **settings: Any
) -> HttpsDestination:
    fields: dict[str, Any] = {
        "name": "organisation",
        "type": "https",
        "url": receiver.url,
        "ca_file": tls_ca.ca_file,
        "token_file": token,
    }
    if made.passphrase_file is not None:
        fields |= {"encryption": "passphrase", "passphrase_file": made.passphrase_file}
    fields |= settings
    destination = registry.build(HttpsConfig.model_validate(fields))
    assert isinstance(destination, HttpsDestination)
    return destination


@pytest.mark.parametrize("encryption", ["envelope", "passphrase"])
def test_sealed_report_is_stored_as_it_was_sealed(
    receiver: Running, tls_ca: TlsFiles, token_file: Path, tmp_path: Path, encryption: str
) -> None:
    made = sealed_parcel(tmp_path, encryption)  # type: ignore[arg-type]
    receipt = _https(receiver, tls_ca, token_file, made).deliver(made.parcel)

    assert "HTTP 201" in receipt
    assert f"location=/reports/{made.report_id}" in receipt
    assert "receipt=rcpt-" in receipt
    assert (receiver.store / f"{made.report_id}.cpseal").read_bytes() == made.sealed_bytes
    seen = receiver.server.seen[-1]
    assert seen["Idempotency-Key"] == seen["X-Report-Id"] == made.report_id
    assert seen["Content-Type"] == "application/vnd.clinical-photo-kiosk.sealed-report+zip"
    assert seen["Content-Digest"].startswith("sha-256=:")
    assert "Authorization" not in seen  # the hook drops it; the receiver did check it
    if encryption == "passphrase":  # the organisation can open it with its passphrase
        assert made.passphrase_file is not None
        source = io.BytesIO(made.sealed_bytes)
        plaintext = io.BytesIO()
        decrypt_payload(
            source,
            read_sealed(source),
            plaintext,
            passphrase=passphrase.read_file(made.passphrase_file, check_strength=False),
        )
        assert plaintext.getvalue() == made.bundle


def test_plaintext_mode_posts_the_bundle_intact_and_retries_are_identical(
    receiver: Running, tls_ca: TlsFiles, token_file: Path, tmp_path: Path
) -> None:
    made = sealed_parcel(tmp_path, "passphrase")
    destination = _https(receiver, tls_ca, token_file, made, mode="plaintext")

    assert "HTTP 201" in destination.deliver(made.parcel)
    stored = (receiver.store / f"{made.report_id}.zip").read_bytes()
    assert read_bundle(stored) == made.entries
    assert receiver.server.seen[-1]["Content-Type"] == "application/zip"
    # The zip is rebuilt byte for byte on a retry, so the receiver recognises it as the same body.
    second = destination.deliver(made.parcel)
    assert "HTTP 200" in second and "already" not in second
    assert [p.suffix for p in receiver.stored(made.report_id)] == [".json", ".zip"]
    station_files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert station_files == {"destination.key", made.parcel.sealed_path.name}, "no plaintext on disk"


def test_redelivery_of_the_same_report_keeps_one_copy(
    receiver: Running, tls_ca: TlsFiles, token_file: Path, tmp_path: Path
) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    destination = _https(receiver, tls_ca, token_file, made)
    assert "HTTP 201" in destination.deliver(made.parcel)
    assert "HTTP 200" in destination.deliver(made.parcel)  # the answer to the first was "lost"

    # Sealed again (new ciphertext, same report id): the receiver keeps the first and says 409.
    resealed = sealed_parcel(tmp_path, "envelope", report=made.report)
    receipt = destination.deliver(resealed.parcel)
    assert "HTTP 409" in receipt and "already delivered" in receipt
    assert [p.suffix for p in receiver.stored(made.report_id)] == [".cpseal", ".json"]
    assert (receiver.store / f"{made.report_id}.cpseal").read_bytes() == made.sealed_bytes


def test_basic_auth_and_custom_headers(receiver: Running, tls_ca: TlsFiles, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    password_file = secret_file(tmp_path / "password", PASSWORD)
    destination = _https(
        receiver,
        tls_ca,
        None,
        made,
        token_file=None,
        username=USER,
        password_file=password_file,
        headers={"X-Clinic": "wound-clinic-7", "X-Api-Version": "2"},
    )
    assert "HTTP 201" in destination.deliver(made.parcel)
    seen = receiver.server.seen[-1]
    assert seen["X-Clinic"] == "wound-clinic-7"
    assert seen["X-Api-Version"] == "2"


@pytest.mark.parametrize("credentials", ["wrong-token", "wrong-password", "none"])
def test_refused_credentials_are_permanent(
    receiver: Running, tls_ca: TlsFiles, tmp_path: Path, credentials: str
) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    settings: dict[str, Any] = {"token_file": None}
    if credentials == "wrong-token":
        settings["token_file"] = secret_file(tmp_path / "token", "not-the-token")
    elif credentials == "wrong-password":
        settings |= {"username": USER, "password_file": secret_file(tmp_path / "pw", "nope")}
    destination = _https(receiver, tls_ca, None, made, **settings)
    with pytest.raises(DeliveryError, match=r"HTTP 401.*credentials were refused") as caught:
        destination.deliver(made.parcel)
    assert caught.value.permanent
    assert not receiver.stored(made.report_id)


def test_server_errors_are_transient_until_it_recovers(
    receiver: Running, tls_ca: TlsFiles, token_file: Path, tmp_path: Path
) -> None:
    made = sealed_parcel(tmp_path, "passphrase")
    destination = _https(receiver, tls_ca, token_file, made, mode="plaintext")
    receiver.server.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(DeliveryError, match="HTTP 503") as caught:
            destination.deliver(made.parcel)
        assert not caught.value.permanent
        assert PATIENT_MRN not in str(caught.value) and PATIENT_NAME not in str(caught.value)
    assert "HTTP 201" in destination.deliver(made.parcel)


@pytest.mark.parametrize(("status", "permanent"), [(429, False), (500, False), (400, True), (404, True)])
def test_status_codes_decide_between_retry_and_a_person(
    receiver: Running, tls_ca: TlsFiles, token_file: Path, tmp_path: Path, status: int, permanent: bool
) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    receiver.server.fail_next(1, status=status)
    with pytest.raises(DeliveryError, match=f"HTTP {status}") as caught:
        _https(receiver, tls_ca, token_file, made).deliver(made.parcel)
    assert caught.value.permanent is permanent


def test_an_untrusted_certificate_is_permanent(receiver: Running, token_file: Path, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    config = HttpsConfig(name="org", type="https", url=receiver.url, token_file=token_file)
    with pytest.raises(DeliveryError, match=r"certificate is not trusted.*ca_file") as caught:
        registry.build(config).deliver(made.parcel)
    assert caught.value.permanent


def test_an_endpoint_that_is_down_is_transient(tls_ca: TlsFiles, token_file: Path, tmp_path: Path) -> None:
    made = sealed_parcel(tmp_path, "envelope")
    config = HttpsConfig(
        name="org",
        type="https",
        url=f"https://127.0.0.1:{free_port()}/reports",
        token_file=token_file,
        ca_file=tls_ca.ca_file,
        timeout=5,
    )
    with pytest.raises(DeliveryError, match="refused") as caught:
        registry.build(config).deliver(made.parcel)
    assert not caught.value.permanent


def test_sealed_reports_over_plain_http_only_when_allowed(tmp_path: Path) -> None:
    """The receiver as its own process (its command line), without TLS, behind an "allow_http" config."""
    port = free_port()
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER_SCRIPT), "--port", str(port), "--store", str(store), "--insecure-http"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        made = sealed_parcel(tmp_path, "envelope")
        url = f"http://127.0.0.1:{port}/reports"
        config = HttpsConfig(name="org", type="https", url=url, allow_http=True)
        assert "HTTP 201" in registry.build(config).deliver(made.parcel)
        assert (store / f"{made.report_id}.cpseal").read_bytes() == made.sealed_bytes
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)
    assert made.report_id.encode() in errors  # it logs report ids ...
    assert PATIENT_MRN.encode() not in errors  # ... and nothing about the patient


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "http://records.example/in", "mode": "plaintext"}, "patient data.*https://"),
        ({"url": "http://records.example/in", "mode": "plaintext", "allow_http": True}, "https://"),
        ({"url": "http://records.example/in"}, "allow_http = true"),
        ({"url": "http://records.example/in", "allow_http": True, "token_file": "/t"}, "in clear"),
        ({"url": "https://user:pw@records.example/in"}, "not in the URL"),
        ({"url": "ftp://records.example/in"}, "https:// URL"),
        ({"headers": {"Idempotency-Key": "x"}}, "set by the station"),
        ({"headers": {"Bad Name": "x"}}, "not a valid header name"),
        ({"headers": {"X-Ok": "a\r\nX-Evil: 1"}}, "one line"),
        ({"headers": {"X-Ok": "café"}}, "ASCII"),
        ({"url": "https://records.example:99999/in"}, "invalid port"),
        ({"token_file": "/t", "username": "u", "password_file": "/p"}, "not both"),
        ({"username": "u"}, "go together"),
    ],
)
def test_configuration_rules(settings: dict[str, Any], message: str) -> None:
    fields = {"name": "org", "type": "https", "url": "https://records.example/in", **settings}
    with pytest.raises(ValidationError, match=message):
        HttpsConfig.model_validate(fields)


def test_down_then_back_is_delivered_exactly_once_through_the_outbox(
    outbox: Outbox, tls_ca: TlsFiles, token_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    made = sealed_parcel(tmp_path, "passphrase")
    config = HttpsConfig(
        name="org",
        type="https",
        url=f"https://127.0.0.1:{port}/reports",
        mode="plaintext",
        encryption="passphrase",
        passphrase_file=made.passphrase_file,
        token_file=token_file,
        ca_file=tls_ca.ca_file,
    )
    destinations = {"org": registry.build(config)}
    path = enqueue(outbox, made, "org")

    assert not sender.drain(outbox, destinations, timeout=0)
    (waiting,) = outbox.deliveries()
    assert waiting.state == "pending" and "refused" in (waiting.last_error or "")
    assert path.exists()

    running = Running(tmp_path / "store", tls_ca, port=port)
    try:
        assert outbox.retry(made.report_id) == 1
        assert sender.drain(outbox, destinations, timeout=10)
        (done,) = outbox.deliveries()
        assert done.state == "delivered" and "HTTP 201" in (done.receipt or "")
        # A crash between "sent" and "recorded" makes the outbox send again: still one copy.
        assert "HTTP 200" in destinations["org"].deliver(made.parcel)
        assert [p.name for p in running.stored(made.report_id)] == [
            f"{made.report_id}.json",
            f"{made.report_id}.zip",
        ]
        assert len(running.server.seen) == 2
    finally:
        running.stop()
    assert not path.exists(), "the sealed file is wiped once delivered"
