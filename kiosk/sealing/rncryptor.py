"""RNCryptor v3 data format on top of pyca/cryptography.

Hand-written because no maintained Python package implements RNCryptor v3 with streaming and
verify-before-release; the format itself is small (RNCryptor-Spec-v3.md):

    key mode:      0x03 0x00 | IV(16) | AES-256-CBC/PKCS7 ciphertext | HMAC-SHA256(32)
    password mode: 0x03 0x01 | enc salt(8) | HMAC salt(8) | IV(16) | ciphertext | HMAC-SHA256(32)

The HMAC covers everything before it. Password keys come from PBKDF2-HMAC-SHA1, 10,000 rounds, 32 bytes.

Decryption authenticates the whole message before it releases a single plaintext byte, so a caller never
has to undo a partial write.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

from cryptography.hazmat.primitives import constant_time, hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

VERSION = 3
OPTION_KEY = 0x00
OPTION_PASSWORD = 0x01
KEY_SIZE = 32
SALT_SIZE = 8
IV_SIZE = 16
HMAC_SIZE = 32
PBKDF2_ITERATIONS = 10_000
CHUNK_SIZE = 1 << 20


class InvalidMessage(ValueError):
    """The message is not RNCryptor v3, is truncated, was tampered with, or the key is wrong."""


def derive_key(password: str | bytes, salt: bytes) -> bytes:
    """PBKDF2-HMAC-SHA1 as the spec fixes it (the iteration count is part of the format, not a choice)."""
    secret = password.encode("utf-8") if isinstance(password, str) else password
    kdf = PBKDF2HMAC(algorithm=hashes.SHA1(), length=KEY_SIZE, salt=salt, iterations=PBKDF2_ITERATIONS)  # noqa: S303
    return kdf.derive(secret)


def split_key(data_key: bytes) -> tuple[bytes, bytes]:
    """A 64-byte data key is the encryption key followed by the HMAC key."""
    if len(data_key) != 2 * KEY_SIZE:
        raise ValueError("an RNCryptor data key is 64 bytes: 32 for AES, 32 for HMAC")
    return data_key[:KEY_SIZE], data_key[KEY_SIZE:]


class Encryptor(io.RawIOBase):
    """A write-only stream: plaintext in, RNCryptor v3 ciphertext out to ``sink``.

    ``close()`` writes the padding and the HMAC; until then the message is incomplete. Leaving a ``with``
    block through an exception abandons the message instead, so no complete-looking message is made from
    partial input. With ``background=True`` the HMAC and the writes to ``sink`` run in a second thread
    while this one encrypts the next chunk: both release the GIL, so sealing uses two cores.
    """

    def __init__(
        self,
        sink: BinaryIO,
        header: bytes,
        enc_key: bytes,
        hmac_key: bytes,
        iv: bytes,
        *,
        background: bool = False,
    ) -> None:
        super().__init__()
        if len(enc_key) != KEY_SIZE or len(hmac_key) != KEY_SIZE or len(iv) != IV_SIZE:
            raise ValueError("RNCryptor v3 needs 32-byte keys and a 16-byte IV")
        self._sink = sink
        self._cipher = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
        self._padder = padding.PKCS7(128).padder()
        self._mac = hmac.HMAC(hmac_key, hashes.SHA256())
        self._tag: bytes | None = None
        self._error: BaseException | None = None
        # A few chunks in flight bound the memory whatever the message size.
        self._queue: queue.Queue[bytes | None] | None = queue.Queue(maxsize=4) if background else None
        self._worker: threading.Thread | None = None
        if self._queue is not None:
            self._worker = threading.Thread(target=self._drain, name="rncryptor-writer", daemon=True)
            self._worker.start()
        self._emit(header + iv)

    @classmethod
    def with_key(
        cls, sink: BinaryIO, data_key: bytes, *, iv: bytes | None = None, background: bool = False
    ) -> Encryptor:
        enc_key, hmac_key = split_key(data_key)
        header = bytes([VERSION, OPTION_KEY])
        return cls(sink, header, enc_key, hmac_key, iv or os.urandom(IV_SIZE), background=background)

    @classmethod
    def with_password(
        cls,
        sink: BinaryIO,
        password: str | bytes,
        *,
        enc_salt: bytes | None = None,
        hmac_salt: bytes | None = None,
        iv: bytes | None = None,
        background: bool = False,
    ) -> Encryptor:
        enc_salt = enc_salt if enc_salt is not None else os.urandom(SALT_SIZE)
        hmac_salt = hmac_salt if hmac_salt is not None else os.urandom(SALT_SIZE)
        header = bytes([VERSION, OPTION_PASSWORD]) + enc_salt + hmac_salt
        enc_key, hmac_key = derive_key(password, enc_salt), derive_key(password, hmac_salt)
        return cls(sink, header, enc_key, hmac_key, iv or os.urandom(IV_SIZE), background=background)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed Encryptor")
        view = memoryview(data)
        for start in range(0, len(view), CHUNK_SIZE):
            self._emit(self._cipher.update(self._padder.update(view[start : start + CHUNK_SIZE])))
        return len(view)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._emit(self._cipher.update(self._padder.finalize()) + self._cipher.finalize())
            self._stop_worker()
            self._tag = self._mac.finalize()
            self._sink.write(self._tag)
        finally:
            self._stop_worker()
            super().close()

    def abort(self) -> None:
        """Stop without finishing the message (no padding, no HMAC)."""
        try:
            self._stop_worker()
        except BaseException:  # noqa: S110 - the caller is already handling the error that made it abort
            pass
        finally:
            super().close()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @property
    def tag(self) -> bytes:
        """The message's HMAC, a fingerprint of the ciphertext, once closed."""
        if self._tag is None:
            raise ValueError("the message is not finished")
        return self._tag

    def _emit(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._queue is None:
            self._mac.update(chunk)
            self._sink.write(chunk)
            return
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def _drain(self) -> None:
        assert self._queue is not None
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._mac.update(chunk)
                    self._sink.write(chunk)
                except BaseException as exc:  # handed to the writing thread at its next call
                    self._error = exc

    def _stop_worker(self) -> None:
        if self._worker is not None and self._queue is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def encrypt_with_key(plaintext: bytes, data_key: bytes, *, iv: bytes | None = None) -> bytes:
    out = io.BytesIO()
    with Encryptor.with_key(out, data_key, iv=iv) as enc:
        enc.write(plaintext)
    return out.getvalue()


def encrypt_with_password(plaintext: bytes, password: str | bytes, **salts_and_iv: bytes) -> bytes:
    out = io.BytesIO()
    with Encryptor.with_password(out, password, **salts_and_iv) as enc:
        enc.write(plaintext)
    return out.getvalue()


def decrypt_stream(
    source: BinaryIO, sink: BinaryIO, *, data_key: bytes | None = None, password: str | bytes | None = None
) -> None:
    """Authenticate the message in ``source`` (seekable), then decrypt it into ``sink``.

    Nothing reaches ``sink`` unless the HMAC over the whole message is valid. The second pass checks the
    HMAC again, so a source that changes between passes is refused too; a caller that writes plaintext
    to disk should therefore give an in-memory sink and write files only after this returns.
    """
    if (data_key is None) == (password is None):
        raise ValueError("give exactly one of data_key or password")
    start = source.tell()
    total = source.seek(0, io.SEEK_END) - start
    source.seek(start)
    prefix = source.read(2)
    if len(prefix) < 2:
        raise InvalidMessage("the file is empty or truncated")
    if prefix[0] != VERSION:
        raise InvalidMessage(f"not an RNCryptor v3 message (version byte {prefix[0]})")
    if prefix[1] == OPTION_PASSWORD:
        if password is None:
            raise InvalidMessage("this message is sealed with a passphrase, not a key")
        salts = source.read(2 * SALT_SIZE)
        if len(salts) < 2 * SALT_SIZE:
            raise InvalidMessage("the file is truncated")
        enc_key = derive_key(password, salts[:SALT_SIZE])
        hmac_key = derive_key(password, salts[SALT_SIZE:])
        header = prefix + salts
    elif prefix[1] == OPTION_KEY:
        if data_key is None:
            raise InvalidMessage("this message is sealed with a key, not a passphrase")
        enc_key, hmac_key = split_key(data_key)
        header = prefix
    else:
        raise InvalidMessage(f"unknown RNCryptor options byte {prefix[1]}")

    body_size = total - len(header) - IV_SIZE - HMAC_SIZE
    if body_size < 16 or body_size % 16:
        raise InvalidMessage("the file is truncated or not a whole number of cipher blocks")
    iv = source.read(IV_SIZE)
    body_start = source.tell()

    def authenticate(on_chunk: Callable[[bytes, bool], None] | None = None) -> None:
        mac = hmac.HMAC(hmac_key, hashes.SHA256())
        mac.update(header + iv)
        source.seek(body_start)
        remaining = body_size
        while remaining:
            chunk = source.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise InvalidMessage("the file is truncated")
            remaining -= len(chunk)
            mac.update(chunk)
            if on_chunk is not None:
                on_chunk(chunk, remaining == 0)
        expected = source.read(HMAC_SIZE)
        if not constant_time.bytes_eq(mac.finalize(), expected):
            raise InvalidMessage("the file was changed or damaged, or the key is wrong (HMAC mismatch)")

    authenticate()

    decryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()

    def decrypt_chunk(chunk: bytes, last: bool) -> None:
        data = unpadder.update(decryptor.update(chunk))
        if last:
            try:
                data += unpadder.update(decryptor.finalize()) + unpadder.finalize()
            except ValueError as exc:  # only reachable with a valid HMAC, i.e. the sender's own bug
                raise InvalidMessage("the message has invalid padding") from exc
        sink.write(data)

    authenticate(decrypt_chunk)


def decrypt(message: bytes, *, data_key: bytes | None = None, password: str | bytes | None = None) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(message), out, data_key=data_key, password=password)
    return out.getvalue()
