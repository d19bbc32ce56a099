"""RNCryptor v3: the official vectors, streaming, and refusal of damaged messages."""

from __future__ import annotations

import io
import os

import pytest

from kiosk.sealing import rncryptor
from tests import rncryptor_vectors as vectors


def _title(record: dict[str, str]) -> str:
    return record["title"]


@pytest.mark.parametrize("record", vectors.load("kdf"), ids=_title)
def test_kdf_vectors(record: dict[str, str]) -> None:
    key = rncryptor.derive_key(record["password"], vectors.hex_value(record, "salt_hex"))
    assert key == vectors.hex_value(record, "key_hex")


@pytest.mark.parametrize("record", vectors.load("key"), ids=_title)
def test_key_vectors(record: dict[str, str]) -> None:
    data_key = vectors.hex_value(record, "enc_key_hex") + vectors.hex_value(record, "hmac_key_hex")
    plaintext = vectors.hex_value(record, "plaintext_hex")
    expected = vectors.hex_value(record, "ciphertext_hex")
    iv = vectors.hex_value(record, "iv_hex")
    assert rncryptor.encrypt_with_key(plaintext, data_key, iv=iv) == expected
    assert rncryptor.decrypt(expected, data_key=data_key) == plaintext


@pytest.mark.parametrize("record", vectors.load("password"), ids=_title)
def test_password_vectors(record: dict[str, str]) -> None:
    plaintext = vectors.hex_value(record, "plaintext_hex")
    expected = vectors.hex_value(record, "ciphertext_hex")
    produced = rncryptor.encrypt_with_password(
        plaintext,
        record["password"],
        enc_salt=vectors.hex_value(record, "enc_salt_hex"),
        hmac_salt=vectors.hex_value(record, "hmac_salt_hex"),
        iv=vectors.hex_value(record, "iv_hex"),
    )
    assert produced == expected
    assert rncryptor.decrypt(expected, password=record["password"]) == plaintext


def test_every_official_vector_file_was_read() -> None:
    assert len(vectors.load("kdf")) >= 5
    assert len(vectors.load("key")) >= 4
    assert len(vectors.load("password")) >= 4


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, rncryptor.CHUNK_SIZE - 1, rncryptor.CHUNK_SIZE * 2 + 5])
def test_streamed_round_trip_in_odd_pieces(size: int, background: bool) -> None:
    plaintext = os.urandom(size)
    key = os.urandom(64)
    out = io.BytesIO()
    with rncryptor.Encryptor.with_key(out, key, background=background) as enc:
        for start in range(0, size, 7777):
            enc.write(plaintext[start : start + 7777])
        enc.write(plaintext[: size // 2])
    plaintext += plaintext[: size // 2]
    message = out.getvalue()
    assert message[:2] == b"\x03\x00"
    assert message[-32:] == enc.tag
    assert rncryptor.decrypt(message, data_key=key) == plaintext


def test_background_writer_matches_inline_output_exactly() -> None:
    plaintext, key, iv = os.urandom(5 * rncryptor.CHUNK_SIZE + 3), os.urandom(64), os.urandom(16)
    outputs = []
    for background in (False, True):
        out = io.BytesIO()
        with rncryptor.Encryptor.with_key(out, key, iv=iv, background=background) as enc:
            enc.write(plaintext)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]


class _BrokenSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        raise OSError(28, "No space left on device")


def test_a_failing_sink_surfaces_in_the_writing_thread() -> None:
    enc = rncryptor.Encryptor.with_key(_BrokenSink(), os.urandom(64), background=True)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space"):
        for _ in range(10):
            enc.write(os.urandom(rncryptor.CHUNK_SIZE))
        enc.close()


@pytest.mark.parametrize("background", [False, True])
def test_an_error_inside_the_block_leaves_no_finished_message(background: bool) -> None:
    out = io.BytesIO()
    with (
        pytest.raises(RuntimeError),
        rncryptor.Encryptor.with_key(out, os.urandom(64), background=background) as enc,
    ):
        enc.write(b"half a report")
        raise RuntimeError("camera unplugged")
    with pytest.raises(ValueError, match="not finished"):
        _ = enc.tag
    assert len(out.getvalue()) < 2 + 16 + 16 + 32


def test_random_ivs_and_salts_differ_each_time() -> None:
    first = rncryptor.encrypt_with_password(b"same", "a passphrase")
    second = rncryptor.encrypt_with_password(b"same", "a passphrase")
    assert first[2:34] != second[2:34]


def test_wrong_key_releases_nothing() -> None:
    message = rncryptor.encrypt_with_key(b"secret photo", os.urandom(64))
    sink = io.BytesIO()
    with pytest.raises(rncryptor.InvalidMessage, match="HMAC"):
        rncryptor.decrypt_stream(io.BytesIO(message), sink, data_key=os.urandom(64))
    assert sink.getvalue() == b""


def test_every_bit_flip_is_refused_before_any_plaintext() -> None:
    key = os.urandom(64)
    message = rncryptor.encrypt_with_key(os.urandom(100), key)
    for bit in range(len(message) * 8):
        damaged = bytearray(message)
        damaged[bit // 8] ^= 1 << (bit % 8)
        sink = io.BytesIO()
        with pytest.raises(rncryptor.InvalidMessage):
            rncryptor.decrypt_stream(io.BytesIO(bytes(damaged)), sink, data_key=key)
        assert sink.getvalue() == b"", f"plaintext released after flipping bit {bit}"


def test_every_truncation_is_refused() -> None:
    message = rncryptor.encrypt_with_password(os.urandom(40), "correct horse battery staple")
    for length in range(len(message)):
        sink = io.BytesIO()
        with pytest.raises(rncryptor.InvalidMessage):
            rncryptor.decrypt_stream(
                io.BytesIO(message[:length]), sink, password="correct horse battery staple"
            )
        assert sink.getvalue() == b""


def test_mode_mismatch_is_explained() -> None:
    message = rncryptor.encrypt_with_password(b"x", "pw")
    with pytest.raises(rncryptor.InvalidMessage, match="passphrase"):
        rncryptor.decrypt(message, data_key=os.urandom(64))
    with pytest.raises(rncryptor.InvalidMessage, match="version"):
        rncryptor.decrypt(b"\x02" + message[1:], password="pw")


class _BytesRNCryptor:
    """The PyPI `rncryptor` package (pycryptodome based), returning bytes instead of text."""

    def __init__(self) -> None:
        import rncryptor as independent

        class Raw(independent.RNCryptor):
            def post_decrypt_data(self, data: bytes) -> bytes:
                return data[: -data[-1]]

        self.cryptor = Raw()


@pytest.mark.parametrize("size", [0, 1, 16, 100_000])
def test_an_independent_implementation_reads_what_we_write(size: int) -> None:
    plaintext = os.urandom(size)
    message = rncryptor.encrypt_with_password(plaintext, "pässwörd with ünïcode")
    assert _BytesRNCryptor().cryptor.decrypt(message, "pässwörd with ünïcode") == plaintext


def test_we_read_what_an_independent_implementation_writes() -> None:
    plaintext = os.urandom(5000)
    message = _BytesRNCryptor().cryptor.encrypt(plaintext, "shared secret")
    assert rncryptor.decrypt(message, password="shared secret") == plaintext
