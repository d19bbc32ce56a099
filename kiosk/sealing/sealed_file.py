"""The sealed report file (``.cpseal``): a zip holding ``package.json`` and ``package.encrypted``.

``package.json`` is ``{"header": {...}, "wrapped_key": "..."}`` in canonical JSON. The header carries no
patient identifiers, so it can be registered with the key server and shown by ``kiosk report inspect``.
``package.encrypted`` is one RNCryptor v3 message whose plaintext is the report bundle (a zip).

The header is bound to the payload twice: its ``payload_hmac`` is the message's own HMAC, and (envelope
mode) its canonical bytes are the HPKE ``info`` of the wrapped data key.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kiosk.sealing import envelope, rncryptor

EXTENSION = ".cpseal"
MEDIA_TYPE = "application/vnd.clinical-photo-kiosk.sealed-report+zip"
FORMAT = "clinical-photo-kiosk/sealed-report"
HEADER_ENTRY = "package.json"
PAYLOAD_ENTRY = "package.encrypted"
MAX_HEADER_BYTES = 64 * 1024


# What zipfile raises on damaged input besides BadZipFile.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    OSError,
    struct.error,
    zlib.error,
    NotImplementedError,
    ValueError,
    KeyError,
)


class InvalidSealedFile(ValueError):
    """Not a sealed report, damaged, truncated or altered."""


class SealedHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["clinical-photo-kiosk/sealed-report"] = FORMAT
    format_version: Literal[1] = 1
    report_id: str = Field(pattern="^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    station_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    created_at: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    recipients: list[str] = Field(default_factory=list, max_length=100)
    encryption: Literal["envelope", "passphrase"]
    payload_format: Literal["RNCryptor-v3"] = "RNCryptor-v3"
    payload_content: Literal["application/zip"] = "application/zip"
    payload_size: int = Field(gt=0)
    payload_hmac: str = Field(pattern="^[0-9a-f]{64}$")
    key_server_url: str | None = None
    kek_version: int | None = None
    kek_fingerprint: str | None = None
    wrap_algorithm: str | None = None

    @model_validator(mode="after")
    def _mode_fields(self) -> SealedHeader:
        key_fields = (self.key_server_url, self.kek_version, self.kek_fingerprint, self.wrap_algorithm)
        if self.encryption == "envelope" and None in key_fields:
            raise ValueError(
                "an envelope header names the key server, KEK version, fingerprint and algorithm"
            )
        if self.encryption == "passphrase" and any(f is not None for f in key_fields):
            raise ValueError("a passphrase header names no key server key")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Sealer(Protocol):
    """One way of protecting the payload: envelope (key server) or passphrase (static key)."""

    def header_fields(self) -> dict[str, Any]: ...
    def encryptor(self, sink: BinaryIO) -> rncryptor.Encryptor: ...
    def package(self, header: SealedHeader) -> dict[str, Any]: ...


class EnvelopeSealer:
    """A fresh data key per report, wrapped to the key server's current public KEK."""

    def __init__(self, kek: envelope.PublicKek) -> None:
        self._kek = kek
        self._data_key: bytes | None = envelope.new_data_key()

    def header_fields(self) -> dict[str, Any]:
        return {
            "encryption": "envelope",
            "key_server_url": self._kek.key_server_url,
            "kek_version": self._kek.version,
            "kek_fingerprint": self._kek.fingerprint,
            "wrap_algorithm": envelope.WRAP_ALGORITHM,
        }

    def encryptor(self, sink: BinaryIO) -> rncryptor.Encryptor:
        assert self._data_key is not None, "an EnvelopeSealer seals one report"
        return rncryptor.Encryptor.with_key(sink, self._data_key, background=True)

    def package(self, header: SealedHeader) -> dict[str, Any]:
        assert self._data_key is not None
        wrapped = envelope.wrap(self._data_key, header.as_dict(), self._kek.key)
        # Drop our reference so the station keeps no way to decrypt; Python cannot scrub the bytes.
        self._data_key = None
        return {"header": header.as_dict(), "wrapped_key": envelope.b64encode(wrapped)}


class PassphraseSealer:
    """RNCryptor password mode, for endpoints that hold an institution passphrase."""

    def __init__(self, passphrase: str) -> None:
        self._passphrase = passphrase

    def header_fields(self) -> dict[str, Any]:
        return {"encryption": "passphrase"}

    def encryptor(self, sink: BinaryIO) -> rncryptor.Encryptor:
        return rncryptor.Encryptor.with_password(sink, self._passphrase, background=True)

    def package(self, header: SealedHeader) -> dict[str, Any]:
        return {"header": header.as_dict()}


class _CountingWriter(io.RawIOBase):
    def __init__(self, sink: BinaryIO) -> None:
        super().__init__()
        self._sink = sink
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._sink.write(data)
        self.count += len(data)
        return len(data)


def write_sealed(
    out: BinaryIO,
    write_payload: Callable[[BinaryIO], None],
    sealer: Sealer,
    *,
    report_id: str,
    station_id: str,
    created_at: str,
    recipients: list[str] | None = None,
) -> SealedHeader:
    """Stream the payload through RNCryptor into a new sealed file on ``out`` (seekable)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as container:
        with container.open(PAYLOAD_ENTRY, "w") as entry:
            counter = _CountingWriter(entry)  # type: ignore[arg-type]
            encryptor = sealer.encryptor(counter)  # type: ignore[arg-type]
            with encryptor:
                write_payload(encryptor)  # type: ignore[arg-type]
        header = SealedHeader(
            report_id=report_id,
            station_id=station_id,
            created_at=created_at,
            recipients=recipients or [],
            payload_size=counter.count,
            payload_hmac=encryptor.tag.hex(),
            **sealer.header_fields(),
        )
        container.writestr(HEADER_ENTRY, envelope.canonical_json(sealer.package(header)))
    return header


@dataclass(frozen=True)
class SealedReport:
    """A validated sealed file: its header and where its payload lies, nothing decrypted."""

    header: SealedHeader
    wrapped_key: bytes | None
    payload_offset: int


def read_sealed(source: BinaryIO) -> SealedReport:
    """Validate the container and header of a sealed file (``source`` seekable)."""
    try:
        with zipfile.ZipFile(source) as container:
            names = sorted(container.namelist())
            if names != sorted([HEADER_ENTRY, PAYLOAD_ENTRY]):
                raise InvalidSealedFile("not a sealed report (unexpected contents)")
            header_info = container.getinfo(HEADER_ENTRY)
            payload_info = container.getinfo(PAYLOAD_ENTRY)
            if header_info.file_size > MAX_HEADER_BYTES:
                raise InvalidSealedFile("the report header is too large")
            if payload_info.compress_type != zipfile.ZIP_STORED or payload_info.flag_bits & 0x1:
                raise InvalidSealedFile("the encrypted payload is stored in an unexpected way")
            raw_header = container.read(HEADER_ENTRY)
    except InvalidSealedFile:
        raise
    except ZIP_ERRORS as exc:
        raise InvalidSealedFile(
            f"not a sealed report, or the file is damaged ({type(exc).__name__})"
        ) from exc
    package = _parse_package(raw_header)
    header = package["header"]
    if header.payload_size != payload_info.file_size:
        raise InvalidSealedFile("the encrypted payload has the wrong size (truncated or altered)")
    offset = _payload_offset(source, payload_info)
    source.seek(offset + header.payload_size - rncryptor.HMAC_SIZE)
    if source.read(rncryptor.HMAC_SIZE).hex() != header.payload_hmac:
        raise InvalidSealedFile("the encrypted payload does not belong to this header (altered)")
    return SealedReport(header=header, wrapped_key=package["wrapped_key"], payload_offset=offset)


def _parse_package(raw: bytes) -> dict[str, Any]:
    try:
        package = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSealedFile("the report header is not valid JSON (damaged)") from exc
    if not isinstance(package, dict) or envelope.canonical_json(package) != raw:
        raise InvalidSealedFile("the report header was altered (not in canonical form)")
    try:
        header = SealedHeader.model_validate(package.get("header"))
    except ValidationError as exc:
        raise InvalidSealedFile(f"the report header is invalid: {exc.errors()[0]['msg']}") from exc
    wrapped_text = package.get("wrapped_key")
    if set(package) - {"header", "wrapped_key"}:
        raise InvalidSealedFile("the report header has unexpected fields")
    if (header.encryption == "envelope") != isinstance(wrapped_text, str):
        raise InvalidSealedFile("the wrapped key is missing or out of place")
    try:
        wrapped = envelope.b64decode(wrapped_text) if isinstance(wrapped_text, str) else None
    except ValueError as exc:
        raise InvalidSealedFile("the wrapped key is damaged") from exc
    return {"header": header, "wrapped_key": wrapped}


def _payload_offset(source: BinaryIO, info: zipfile.ZipInfo) -> int:
    # The local header's extra field may differ from the central directory's, so read it.
    source.seek(info.header_offset)
    local = source.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise InvalidSealedFile("the file is damaged (bad entry header)")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of ``source`` from ``offset``."""

    def __init__(self, source: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self._source, self._offset, self._size, self._pos = source, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        size = self._size - self._pos if size < 0 else min(size, self._size - self._pos)
        self._source.seek(self._offset + self._pos)
        data = self._source.read(size)
        self._pos += len(data)
        return data


def decrypt_payload(
    source: BinaryIO,
    sealed: SealedReport,
    sink: BinaryIO,
    *,
    data_key: bytes | None = None,
    passphrase: str | None = None,
) -> None:
    """Authenticate, then decrypt the payload into ``sink`` (give an in-memory sink; see rncryptor)."""
    window = _Window(source, sealed.payload_offset, sealed.header.payload_size)
    rncryptor.decrypt_stream(window, sink, data_key=data_key, password=passphrase)  # type: ignore[arg-type]
