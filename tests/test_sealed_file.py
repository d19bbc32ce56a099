"""The sealed file container and the envelope: round trips, header binding, tampering."""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile

import pytest

from kiosk.sealing import envelope, rncryptor
from kiosk.sealing.sealed_file import (
    EnvelopeSealer,
    InvalidSealedFile,
    PassphraseSealer,
    decrypt_payload,
    read_sealed,
    write_sealed,
)

PASSPHRASE = "Zk3q-9vLr_xW2pT7mN4bY8cH1jF6sD0gA5eU"


@pytest.fixture(scope="module")
def kek_private() -> envelope.X25519PrivateKey:
    return envelope.generate_kek()


@pytest.fixture(scope="module")
def kek(kek_private: envelope.X25519PrivateKey) -> envelope.PublicKek:
    return envelope.PublicKek(
        version=3, key=kek_private.public_key(), key_server_url="https://keys.example.test"
    )


def _seal(sealer: object, payload: bytes, recipients: list[str] | None = None) -> bytes:
    out = io.BytesIO()
    write_sealed(
        out,
        lambda sink: sink.write(payload),
        sealer,  # type: ignore[arg-type]
        report_id=str(uuid.uuid4()),
        station_id="wound-clinic-1",
        created_at="2026-11-22T10:00:00Z",
        recipients=recipients or ["dr.ward"],
    )
    return out.getvalue()


def _open_envelope(sealed_bytes: bytes, private: envelope.X25519PrivateKey) -> bytes:
    source = io.BytesIO(sealed_bytes)
    sealed = read_sealed(source)
    assert sealed.wrapped_key is not None
    data_key = envelope.unwrap(sealed.wrapped_key, sealed.header.as_dict(), private)
    sink = io.BytesIO()
    decrypt_payload(source, sealed, sink, data_key=data_key)
    return sink.getvalue()


def test_envelope_round_trip(kek: envelope.PublicKek, kek_private: envelope.X25519PrivateKey) -> None:
    payload = os.urandom(300_000)
    sealed_bytes = _seal(EnvelopeSealer(kek), payload)
    assert _open_envelope(sealed_bytes, kek_private) == payload
    header = read_sealed(io.BytesIO(sealed_bytes)).header
    assert header.kek_version == 3
    assert header.kek_fingerprint == kek.fingerprint
    assert header.recipients == ["dr.ward"]


def test_passphrase_round_trip() -> None:
    payload = os.urandom(5000)
    source = io.BytesIO(_seal(PassphraseSealer(PASSPHRASE), payload))
    sealed = read_sealed(source)
    assert sealed.header.encryption == "passphrase"
    assert sealed.wrapped_key is None
    sink = io.BytesIO()
    decrypt_payload(source, sealed, sink, passphrase=PASSPHRASE)
    assert sink.getvalue() == payload


def test_payload_is_standard_rncryptor(kek: envelope.PublicKek) -> None:
    payload = b"any RNCryptor v3 reader can open this"
    with zipfile.ZipFile(io.BytesIO(_seal(PassphraseSealer(PASSPHRASE), payload))) as container:
        message = container.read("package.encrypted")
    assert rncryptor.decrypt(message, password=PASSPHRASE) == payload


def test_the_station_cannot_unwrap_with_what_it_holds(
    kek: envelope.PublicKek, kek_private: envelope.X25519PrivateKey
) -> None:
    sealed = read_sealed(io.BytesIO(_seal(EnvelopeSealer(kek), b"x" * 100)))
    other = envelope.generate_kek()
    with pytest.raises(envelope.UnwrapError):
        envelope.unwrap(sealed.wrapped_key or b"", sealed.header.as_dict(), other)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("report_id", str(uuid.uuid4())),
        ("station_id", "wound-clinic-2"),
        ("recipients", ["mallory"]),
        ("created_at", "2026-11-22T10:00:01Z"),
        ("kek_version", 4),
        ("key_server_url", "https://evil.example.test"),
    ],
)
def test_changing_any_header_field_breaks_unwrap(
    kek: envelope.PublicKek, kek_private: envelope.X25519PrivateKey, field: str, value: object
) -> None:
    sealed = read_sealed(io.BytesIO(_seal(EnvelopeSealer(kek), b"x" * 100)))
    header = sealed.header.as_dict()
    header[field] = value
    with pytest.raises(envelope.UnwrapError):
        envelope.unwrap(sealed.wrapped_key or b"", header, kek_private)


def test_unwrap_of_canonical_header_bytes_is_the_same_unwrap(
    kek: envelope.PublicKek, kek_private: envelope.X25519PrivateKey
) -> None:
    sealed = read_sealed(io.BytesIO(_seal(EnvelopeSealer(kek), b"x" * 100)))
    canonical = envelope.canonical_json(sealed.header.as_dict())
    wrapped = sealed.wrapped_key or b""
    assert envelope.unwrap_canonical(wrapped, canonical, kek_private) == envelope.unwrap(
        wrapped, sealed.header.as_dict(), kek_private
    )
    # One byte more (a space a lenient serialiser might add) is a different header.
    with pytest.raises(envelope.UnwrapError):
        envelope.unwrap_canonical(wrapped, canonical.replace(b",", b", ", 1), kek_private)


def _rewrite_package(sealed_bytes: bytes, edit: object) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(sealed_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "package.json":
                data = edit(data)  # type: ignore[operator]
            target.writestr(info, data)
    return out.getvalue()


def test_a_re_canonicalised_but_edited_header_is_refused_by_unwrap(
    kek: envelope.PublicKek, kek_private: envelope.X25519PrivateKey
) -> None:
    def retarget(raw: bytes) -> bytes:
        package = json.loads(raw)
        package["header"]["recipients"] = ["mallory"]
        return envelope.canonical_json(package)

    tampered = _rewrite_package(_seal(EnvelopeSealer(kek), b"y" * 64), retarget)
    with pytest.raises(envelope.UnwrapError):
        _open_envelope(tampered, kek_private)


def test_a_non_canonical_header_is_refused(kek: envelope.PublicKek) -> None:
    tampered = _rewrite_package(_seal(EnvelopeSealer(kek), b"z"), lambda raw: raw.replace(b",", b", ", 1))
    with pytest.raises(InvalidSealedFile, match="altered"):
        read_sealed(io.BytesIO(tampered))


def test_swapped_payload_is_refused(kek: envelope.PublicKek) -> None:
    first = zipfile.ZipFile(io.BytesIO(_seal(EnvelopeSealer(kek), b"a" * 64)))
    second = zipfile.ZipFile(io.BytesIO(_seal(EnvelopeSealer(kek), b"b" * 64)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as mixed:
        mixed.writestr("package.json", first.read("package.json"))
        mixed.writestr("package.encrypted", second.read("package.encrypted"))
    with pytest.raises(InvalidSealedFile, match="does not belong"):
        read_sealed(io.BytesIO(out.getvalue()))


def test_every_single_bit_flip_is_refused_before_any_plaintext(
    kek: envelope.PublicKek, kek_private: envelope.X25519PrivateKey
) -> None:
    sealed_bytes = _seal(EnvelopeSealer(kek), os.urandom(48))
    for position in range(len(sealed_bytes)):
        damaged = bytearray(sealed_bytes)
        damaged[position] ^= 1 << (position % 8)
        source = io.BytesIO(bytes(damaged))
        sink = io.BytesIO()
        try:
            sealed = read_sealed(source)
            assert sealed.wrapped_key is not None
            data_key = envelope.unwrap(sealed.wrapped_key, sealed.header.as_dict(), kek_private)
            decrypt_payload(source, sealed, sink, data_key=data_key)
        except (InvalidSealedFile, envelope.UnwrapError, rncryptor.InvalidMessage):
            assert sink.getvalue() == b""
            continue
        # A flip in bytes no reader interprets (zip timestamps, CRCs of the stored payload we do not
        # trust) may leave the report intact; it must then be exactly the original.
        assert sink.getvalue() == _open_envelope(sealed_bytes, kek_private)


def test_every_truncation_is_refused(kek: envelope.PublicKek) -> None:
    sealed_bytes = _seal(PassphraseSealer(PASSPHRASE), os.urandom(40))
    for length in range(0, len(sealed_bytes), 7):
        with pytest.raises((InvalidSealedFile, rncryptor.InvalidMessage)):
            source = io.BytesIO(sealed_bytes[:length])
            decrypt_payload(source, read_sealed(source), io.BytesIO(), passphrase=PASSPHRASE)


def test_not_a_sealed_file() -> None:
    with pytest.raises(InvalidSealedFile, match="not a sealed report"):
        read_sealed(io.BytesIO(b"%PDF-1.7 this is something else"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as other:
        other.writestr("hello.txt", "hi")
    with pytest.raises(InvalidSealedFile, match="unexpected contents"):
        read_sealed(io.BytesIO(out.getvalue()))


def test_public_kek_serialisation_checks_its_fingerprint(kek: envelope.PublicKek) -> None:
    data = kek.to_dict()
    assert envelope.PublicKek.from_dict(data) == kek
    data["fingerprint"] = "0" * 64
    with pytest.raises(ValueError, match="fingerprint"):
        envelope.PublicKek.from_dict(data)
