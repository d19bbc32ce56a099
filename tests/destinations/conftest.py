"""Shared pieces for destination tests: real sealed parcels, a throwaway CA, free ports, the outbox.

Any destination's tests can use them:

    from tests.destinations.conftest import PATIENT_MRN, PATIENT_NAME, sealed_parcel

    made = sealed_parcel(tmp_path, encryption="passphrase")   # or "envelope"
    destination = registry.build(config_with(passphrase_file=made.passphrase_file))
    destination.deliver(made.parcel)
    assert received == made.sealed_bytes      # sealed destinations
    assert opened == made.entries             # plaintext destinations

Fixtures: ``parcel_factory`` (``sealed_parcel`` bound to tmp_path), ``tls_ca`` (session: CA and server
certificate for 127.0.0.1/localhost), ``outbox``. Nothing here fakes a server: tests start real ones.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from kiosk import fsutil
from kiosk.destinations.base import Parcel
from kiosk.outbox.store import Outbox
from kiosk.pipeline import header_time
from kiosk.report.bundle import read_bundle, write_bundle
from kiosk.report.model import Patient, Report
from kiosk.sealing import envelope, passphrase
from kiosk.sealing.sealed_file import EXTENSION, EnvelopeSealer, PassphraseSealer, write_sealed
from tests.factories import sample_report
from tests.net import free_port  # noqa: F401 (re-exported: destination tests import it from here)

# Distinctive identifiers, so "no patient data leaked" checks cannot pass by accident.
PATIENT_MRN = "MRN-DEST-77310"
PATIENT_NAME = "Quinn Zebedee-Marchetti"
STATION_ID = "wound-clinic-7"
KEY_SERVER_URL = "https://keys.clinic.test"


def destination_report(**overrides: object) -> Report:
    """``tests.factories.sample_report`` with this module's patient identifiers and a fresh report id."""
    patient = Patient(
        mrn=PATIENT_MRN,
        issuer="Example General Hospital",
        name=PATIENT_NAME,
        birth_date=date(1950, 1, 2),
        id_source="barcode",
        barcode_format="DataMatrix",
        confirmed_by="birth_date",
    )
    return sample_report(patient=patient, **overrides)


@dataclass(frozen=True)
class SealedParcel:
    """A real sealed report on disk, and everything a test needs to check what a destination did."""

    parcel: Parcel
    report: Report
    sealed_bytes: bytes
    bundle: bytes  # the bundle zip exactly as sealed
    entries: dict[str, bytes]  # what open_bundle returns for it
    passphrase_file: Path | None  # passphrase mode: the destination's key file (0600)
    kek: X25519PrivateKey | None  # envelope mode: the key server's private key, to open it in tests

    @property
    def report_id(self) -> str:
        return self.parcel.report_id

    def unwrap(self, header: object, wrapped_key: bytes) -> bytes:
        """Envelope mode: the data key, as the key server's delivery unwrap would release it."""
        assert self.kek is not None
        return envelope.unwrap(wrapped_key, self.parcel.header.as_dict(), self.kek)


@functools.cache
def _kek() -> X25519PrivateKey:
    return envelope.generate_kek()


def sealed_parcel(
    directory: Path,
    encryption: Literal["passphrase", "envelope"] = "passphrase",
    *,
    report: Report | None = None,
    passphrase_file: Path | None = None,
) -> SealedParcel:
    """Seal ``report`` (default: a fresh one-photo report) into ``directory``.

    Passphrase mode uses ``passphrase_file`` or ``directory/destination.key`` (created once, 0600), so
    every parcel sealed into one directory opens with the same destination config. Sealing the same
    ``report`` twice gives the same report id but different ciphertext (a fresh salt or data key)."""
    directory.mkdir(parents=True, exist_ok=True)
    report = report or destination_report()
    bundle = io.BytesIO()
    write_bundle(report, bundle)
    kek: X25519PrivateKey | None = None
    if encryption == "passphrase":
        passphrase_file = passphrase_file or directory / "destination.key"
        if not passphrase_file.exists():
            passphrase.write_new_file(passphrase_file)
        sealer: PassphraseSealer | EnvelopeSealer = PassphraseSealer(passphrase.read_file(passphrase_file))
    else:
        passphrase_file, kek = None, _kek()
        public = envelope.PublicKek(version=1, key=kek.public_key(), key_server_url=KEY_SERVER_URL)
        sealer = EnvelopeSealer(public)
    sealed_dir = directory / "sealed"
    path = sealed_dir / f"{report.report_id}.{len(list(sealed_dir.glob('*')))}{EXTENSION}"
    with fsutil.atomic_writer(path) as handle:
        header = write_sealed(
            handle,
            lambda sink: sink.write(bundle.getvalue()),
            sealer,
            report_id=report.report_id,
            station_id=STATION_ID,
            created_at=header_time(report.created_at),
            recipients=["wound-team"] if encryption == "envelope" else [],
        )
    return SealedParcel(
        parcel=Parcel(report.report_id, path, header),
        report=report,
        sealed_bytes=path.read_bytes(),
        bundle=bundle.getvalue(),
        entries=read_bundle(bundle.getvalue()),
        passphrase_file=passphrase_file,
        kek=kek,
    )


@pytest.fixture
def parcel_factory(tmp_path: Path) -> Callable[..., SealedParcel]:
    """``parcel_factory(encryption="passphrase"|"envelope", report=None)`` sealing into tmp_path."""
    return functools.partial(sealed_parcel, tmp_path / "station")


def enqueue(outbox: Outbox, made: SealedParcel, *destinations: str) -> Path:
    """Put a sealed parcel into a real outbox for ``destinations``, as the pipeline does."""
    path = outbox.sealed_path(made.report_id, 1)
    fsutil.atomic_copy(made.parcel.sealed_path, path)
    outbox.enqueue(made.report_id, {path: made.parcel.header}, dict.fromkeys(destinations, path))
    return path


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    store = Outbox(tmp_path / "data")
    yield store
    store.close()


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, ::1 and localhost (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFiles]:
    folder = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _certificate("Kiosk test CA", ca_key, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ip_address("127.0.0.1")),
        x509.IPAddress(ip_address("::1")),
    ]
    server = (
        _certificate("localhost", server_key, ca.subject)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.key_file.chmod(0o600)
    yield files
    shutil.rmtree(folder, ignore_errors=True)


def secret_file(path: Path, value: str) -> Path:
    """A one-line secret file, mode 0600, as destinations require for passwords and tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path
