"""The recipient's page: RNCryptor v3, .cpseal and bundle reading in real headless Chromium (WebCrypto).

One browser and one page serve the whole module. The page is loaded from a local static server with a
strict Content-Security-Policy, so the modules are proven to work with no inline code, no eval and no
network beyond their own origin. Files the page reads are served by the same server from memory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from kiosk.report.bundle import read_bundle
from kiosk.sealing import envelope, rncryptor
from kiosk.sealing.sealed_file import EnvelopeSealer, PassphraseSealer, Sealer, read_sealed, write_sealed
from tests import rncryptor_vectors as vectors
from tests.browser import chromium

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # needed as root; the page only runs our own modules
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BLANK = "/__test__/blank.html"
CSP = "default-src 'none'; script-src 'self'; connect-src 'self'"

DAMAGED = "the file was changed or damaged, or the key is wrong"
TRUNCATED = "the file is truncated"
NOT_RNCRYPTOR = "not an RNCryptor v3 message"

# Installed once in the page: the modules and small helpers, on window.t.
PAGE_HELPERS = """async () => {
  const rn = await import('/js/rncryptor.js');
  const sealed = await import('/js/sealed.js');
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  const unhex = (s) => new Uint8Array((s.match(/../g) ?? []).map((h) => parseInt(h, 16)));
  const fetchBytes = async (url) => new Uint8Array(await (await fetch(url)).arrayBuffer());
  const attempt = async (fn) => {
    try { return { ok: true, value: await fn() }; }
    catch (e) { return { ok: false, name: e.name, message: e.message }; }
  };
  window.t = { rn, sealed, hex, unhex, fetchBytes, attempt };
}"""

# Open a served .cpseal as the recipient page will: container, then payload, then bundle.
OPEN_SEALED = """async ([url, secret]) => t.attempt(async () => {
  const times = {};
  let start = performance.now();
  const file = await t.sealed.openSealedFile(await t.fetchBytes(url));
  times.open = performance.now() - start;
  start = performance.now();
  const key = secret.dataKey ? { dataKey: t.unhex(secret.dataKey) } : { password: secret.password };
  const plain = await t.rn.decryptRNCryptor(file.payload, key);
  times.decrypt = performance.now() - start;
  start = performance.now();
  const bundle = await t.sealed.readBundle(plain);
  times.bundle = performance.now() - start;
  return {
    header: file.header,
    wrappedKey: file.wrappedKey,
    report: bundle.report,
    xml: bundle.xml,
    pdf: await t.sealed.sha256hex(bundle.pdf),
    photos: bundle.photos.map((p) => ({ file: p.file, size: p.bytes.length, sha256hex: p.sha256hex })),
    signature: bundle.signature && await t.sealed.sha256hex(bundle.signature),
    times,
  };
})"""


class _Handler(SimpleHTTPRequestHandler):
    """web/static as is, plus the blank test page and in-memory files under /__test__/."""

    blobs: ClassVar[dict[str, bytes]] = {}
    extensions_map: ClassVar[dict[str, str]] = {  # type: ignore[misc]
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",  # module scripts are refused under any other type
    }

    def do_GET(self) -> None:
        if self.path == BLANK:
            self._send(b"<!doctype html><title>webcrypto tests</title>", "text/html; charset=utf-8")
        elif self.path in self.blobs:
            self._send(self.blobs[self.path], "application/octet-stream")
        else:
            super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticServer:
    def __init__(self) -> None:
        handler = functools.partial(_Handler, directory=str(STATIC))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> str:
        """Serve ``data`` at a fresh path; returns that path."""
        path = f"/__test__/{uuid.uuid4().hex}.bin"
        _Handler.blobs[path] = data
        return path

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        _Handler.blobs.clear()


@pytest.fixture(scope="module")
def server() -> Iterator[StaticServer]:
    srv = StaticServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def requests_seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def page(browser: Browser, server: StaticServer, requests_seen: list[str]) -> Iterator[Page]:
    context = browser.new_context()
    pg = context.new_page()
    pg.on("request", lambda request: requests_seen.append(request.url))
    pg.goto(server.base + BLANK)
    assert pg.evaluate("() => window.isSecureContext"), "WebCrypto needs a secure context"
    pg.evaluate(PAGE_HELPERS)
    yield pg
    context.close()


def _title(record: dict[str, str]) -> str:
    return record["title"]


def js_decrypt(
    page: Page, message: bytes, *, data_key: bytes | None = None, password: str | None = None
) -> dict[str, Any]:
    """decryptRNCryptor in the page: {"ok": True, "value": plaintext hex} or the error's name and message."""
    secret = {"dataKey": data_key.hex()} if data_key is not None else {"password": password}
    return page.evaluate(
        """async ([m, s]) => t.attempt(async () => t.hex(await t.rn.decryptRNCryptor(t.unhex(m),
             s.dataKey ? { dataKey: t.unhex(s.dataKey) } : { password: s.password })))""",
        [message.hex(), secret],
    )


def assert_refused(result: dict[str, Any], message: str) -> None:
    assert not result["ok"], "the page accepted a damaged message"
    assert result["name"] == "RNCryptorError"
    assert result["message"].startswith(message), result["message"]


# --- official RNCryptor v3 vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("record", vectors.load("kdf"), ids=_title)
def test_kdf_vectors(page: Page, record: dict[str, str]) -> None:
    key = page.evaluate(
        "async ([p, s]) => t.hex(await t.rn.deriveKey(p, t.unhex(s)))",
        [record["password"], vectors.hex_value(record, "salt_hex").hex()],
    )
    assert key == vectors.hex_value(record, "key_hex").hex()


@pytest.mark.parametrize("record", vectors.load("key"), ids=_title)
def test_key_vectors(page: Page, record: dict[str, str]) -> None:
    data_key = vectors.hex_value(record, "enc_key_hex") + vectors.hex_value(record, "hmac_key_hex")
    plaintext = vectors.hex_value(record, "plaintext_hex")
    expected = vectors.hex_value(record, "ciphertext_hex")
    produced = page.evaluate(
        "async ([p, k, iv]) => t.hex(await t.rn.encryptRNCryptor(t.unhex(p), "
        "{ dataKey: t.unhex(k), iv: t.unhex(iv) }))",
        [plaintext.hex(), data_key.hex(), vectors.hex_value(record, "iv_hex").hex()],
    )
    assert produced == expected.hex()
    assert js_decrypt(page, expected, data_key=data_key) == {"ok": True, "value": plaintext.hex()}


@pytest.mark.parametrize("record", vectors.load("password"), ids=_title)
def test_password_vectors(page: Page, record: dict[str, str]) -> None:
    plaintext = vectors.hex_value(record, "plaintext_hex")
    expected = vectors.hex_value(record, "ciphertext_hex")
    produced = page.evaluate(
        """async ([p, pw, es, hs, iv]) => t.hex(await t.rn.encryptRNCryptor(t.unhex(p),
             { password: pw, encSalt: t.unhex(es), hmacSalt: t.unhex(hs), iv: t.unhex(iv) }))""",
        [
            plaintext.hex(),
            record["password"],
            vectors.hex_value(record, "enc_salt_hex").hex(),
            vectors.hex_value(record, "hmac_salt_hex").hex(),
            vectors.hex_value(record, "iv_hex").hex(),
        ],
    )
    assert produced == expected.hex()
    assert js_decrypt(page, expected, password=record["password"]) == {"ok": True, "value": plaintext.hex()}


def test_every_official_vector_file_was_read() -> None:
    assert len(vectors.load("kdf")) >= 5
    assert len(vectors.load("key")) >= 4
    assert len(vectors.load("password")) >= 4


# --- interoperability with the Python implementation ------------------------------------------------------


@pytest.mark.parametrize("size", [0, 15, 16, 17, 4099])
def test_page_encrypts_what_python_decrypts(page: Page, size: int) -> None:
    plaintext, data_key = os.urandom(size), os.urandom(64)
    by_key = page.evaluate(
        "async ([p, k]) => t.hex(await t.rn.encryptRNCryptor(t.unhex(p), { dataKey: t.unhex(k) }))",
        [plaintext.hex(), data_key.hex()],
    )
    by_password = page.evaluate(
        "async (p) => t.hex(await t.rn.encryptRNCryptor(t.unhex(p), { password: 'Grüße, 看護師' }))",
        plaintext.hex(),
    )
    assert rncryptor.decrypt(bytes.fromhex(by_key), data_key=data_key) == plaintext
    assert rncryptor.decrypt(bytes.fromhex(by_password), password="Grüße, 看護師") == plaintext
    # Fresh IV and salts each time, as the Python side does.
    again = page.evaluate(
        "async (p) => t.hex(await t.rn.encryptRNCryptor(t.unhex(p), { password: 'Grüße, 看護師' }))",
        plaintext.hex(),
    )
    assert again[:68] != by_password[:68]


# --- refusal of damaged, truncated and mismatched messages ------------------------------------------------

KEY = bytes(range(64))
KEY_MESSAGE = rncryptor.encrypt_with_key(os.urandom(100), KEY)  # 2 + 16 + 112 + 32 = 162 bytes
PASSWORD = "correct horse battery staple"
PASSWORD_MESSAGE = rncryptor.encrypt_with_password(b"a small plaintext", PASSWORD)  # 2 + 16 + 16 + 32 + 32


def _flip(message: bytes, position: int, mask: int = 0x01) -> bytes:
    out = bytearray(message)
    out[position] ^= mask
    return bytes(out)


@pytest.mark.parametrize(
    ("position", "mask", "expected"),
    [
        (0, 0x01, NOT_RNCRYPTOR),  # version byte
        (1, 0x04, NOT_RNCRYPTOR),  # options byte to an unknown value
        (1, 0x01, "this message is sealed with a passphrase, not a key"),  # key mode to password mode
        (2, 0x80, DAMAGED),  # first IV byte
        (17, 0x01, DAMAGED),  # last IV byte
        (18, 0x01, DAMAGED),  # first ciphertext byte
        (70, 0x10, DAMAGED),  # middle of the ciphertext
        (129, 0x01, DAMAGED),  # last ciphertext byte (the padding block)
        (130, 0x01, DAMAGED),  # first tag byte
        (161, 0x80, DAMAGED),  # last tag byte
    ],
)
def test_bit_flips_in_key_mode_are_refused(page: Page, position: int, mask: int, expected: str) -> None:
    assert len(KEY_MESSAGE) == 162
    assert_refused(js_decrypt(page, _flip(KEY_MESSAGE, position, mask), data_key=KEY), expected)


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        (1, "this message is sealed with a key, not a passphrase"),  # password mode to key mode
        (2, DAMAGED),  # encryption salt: a different AES key
        (13, DAMAGED),  # HMAC salt: a different HMAC key
        (20, DAMAGED),  # IV
        (40, DAMAGED),  # ciphertext
        (len(PASSWORD_MESSAGE) - 1, DAMAGED),  # tag
    ],
)
def test_bit_flips_in_password_mode_are_refused(page: Page, position: int, expected: str) -> None:
    assert_refused(js_decrypt(page, _flip(PASSWORD_MESSAGE, position), password=PASSWORD), expected)


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (0, TRUNCATED),
        (1, TRUNCATED),
        (2, TRUNCATED),  # header only
        (18 + 32, TRUNCATED),  # IV and a tag, no ciphertext
        (161, TRUNCATED),  # one byte short
        (162 - 17, TRUNCATED),
        (162 - 16, DAMAGED),  # a whole block short: looks complete, so only the HMAC can tell
        (162 - 32, DAMAGED),  # the tag cut off entirely
    ],
)
def test_truncated_messages_are_refused(page: Page, keep: int, expected: str) -> None:
    assert_refused(js_decrypt(page, KEY_MESSAGE[:keep], data_key=KEY), expected)


def test_wrong_key_or_password_is_refused(page: Page) -> None:
    assert_refused(js_decrypt(page, KEY_MESSAGE, data_key=bytes(64)), DAMAGED)
    assert_refused(js_decrypt(page, PASSWORD_MESSAGE, password=PASSWORD + " "), DAMAGED)
    assert_refused(
        js_decrypt(page, PASSWORD_MESSAGE, data_key=KEY), "this message is sealed with a passphrase"
    )
    assert_refused(js_decrypt(page, b"PK\x03\x04" + bytes(100), data_key=KEY), NOT_RNCRYPTOR)


# --- sealed files made by the kiosk -----------------------------------------------------------------------


def _jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (40, 20), 255).save(out, format="PNG")
    return out.getvalue()


def _make_bundle(
    photos: dict[str, bytes], *, signature: bytes | None = None, extra: dict[str, bytes] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """A bundle laid out as kiosk.report.bundle writes it: JSON and XML deflated, the rest stored."""
    report = {
        "report_id": "not-checked-by-the-page",
        "patient": {"name": "Zoë Ünal", "note": "wound, left heel"},
        "photos": [
            {"file": name, "sha256": hashlib.sha256(data).hexdigest()} for name, data in photos.items()
        ],
    }
    entries: list[tuple[str, bytes, int]] = [
        ("report.json", json.dumps(report, ensure_ascii=False).encode(), zipfile.ZIP_DEFLATED),
        ("report.xml", "<report><patient>Zoë Ünal</patient></report>".encode(), zipfile.ZIP_DEFLATED),
        ("report.pdf", b"%PDF-1.7\n" + os.urandom(3000) + b"\n%%EOF\n", zipfile.ZIP_STORED),
        *((name, data, zipfile.ZIP_STORED) for name, data in photos.items()),
    ]
    if signature is not None:
        entries.append(("consent/signature.png", signature, zipfile.ZIP_STORED))
    entries += [(name, data, zipfile.ZIP_STORED) for name, data in (extra or {}).items()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        for name, data, compression in entries:
            bundle.writestr(zipfile.ZipInfo(name, (2025, 1, 2, 3, 4, 5)), data, compress_type=compression)
    return out.getvalue(), report


def _seal(payload: bytes, sealer: Sealer) -> bytes:
    out = io.BytesIO()
    write_sealed(
        out,
        lambda sink: sink.write(payload),
        sealer,
        report_id=str(uuid.uuid4()),
        station_id="ward-3.kiosk-1",
        created_at="2025-01-02T03:04:05Z",
        recipients=["wound-care@example.org"],
    )
    return out.getvalue()


def _open_in_page(page: Page, server: StaticServer, sealed: bytes, secret: dict[str, str]) -> dict[str, Any]:
    return page.evaluate(OPEN_SEALED, [server.put(sealed), secret])


class _KeySealer(PassphraseSealer):
    """Key mode with a known key and no key server (its header says passphrase; the page does not mind)."""

    def __init__(self, data_key: bytes) -> None:
        super().__init__("unused")
        self._data_key = data_key

    def encryptor(self, sink: Any) -> rncryptor.Encryptor:
        return rncryptor.Encryptor.with_key(sink, self._data_key)


def test_passphrase_sealed_report_opens_in_the_page(page: Page, server: StaticServer) -> None:
    photos = {"photos/photo-01.jpg": _jpeg((200, 80, 60)), "photos/photo-02.jpg": _jpeg((20, 90, 200))}
    signature = _png()
    bundle, report = _make_bundle(photos, signature=signature)
    assert set(read_bundle(bundle)) >= set(photos)  # the Python reader accepts the same bundle
    sealed = _seal(bundle, PassphraseSealer("Wound care, ward 3: 2025!"))
    header = read_sealed(io.BytesIO(sealed)).header

    result = _open_in_page(page, server, sealed, {"password": "Wound care, ward 3: 2025!"})
    assert result["ok"], result
    opened = result["value"]
    assert opened["header"] == header.as_dict()
    assert opened["wrappedKey"] is None
    assert opened["report"] == report
    assert opened["xml"] == "<report><patient>Zoë Ünal</patient></report>"
    assert opened["pdf"] == hashlib.sha256(read_bundle(bundle)["report.pdf"]).hexdigest()
    assert opened["photos"] == [
        {"file": name, "size": len(data), "sha256hex": hashlib.sha256(data).hexdigest()}
        for name, data in photos.items()
    ]
    assert opened["signature"] == hashlib.sha256(signature).hexdigest()

    wrong = _open_in_page(page, server, sealed, {"password": "Wound care, ward 3: 2024!"})
    assert not wrong["ok"] and wrong["message"] == DAMAGED


def test_envelope_sealed_report_opens_with_the_unwrapped_key(page: Page, server: StaticServer) -> None:
    kek = envelope.generate_kek()
    public = envelope.PublicKek(version=7, key=kek.public_key(), key_server_url="https://keys.example.org")
    photos = {"photos/photo-01.jpg": _jpeg((10, 160, 10))}
    bundle, report = _make_bundle(photos)
    sealed = _seal(bundle, EnvelopeSealer(public))
    # The key server's part, done here in Python: unwrap the data key bound to this exact header.
    info = read_sealed(io.BytesIO(sealed))
    assert info.wrapped_key is not None
    data_key = envelope.unwrap(info.wrapped_key, info.header.as_dict(), kek)

    result = _open_in_page(page, server, sealed, {"dataKey": data_key.hex()})
    assert result["ok"], result
    opened = result["value"]
    assert opened["header"]["encryption"] == "envelope"
    assert opened["header"]["kek_version"] == 7
    assert opened["wrappedKey"] == envelope.b64encode(info.wrapped_key)
    assert opened["report"] == report
    assert opened["signature"] is None
    assert opened["photos"][0]["sha256hex"] == hashlib.sha256(photos["photos/photo-01.jpg"]).hexdigest()

    wrong = _open_in_page(page, server, sealed, {"dataKey": os.urandom(64).hex()})
    assert not wrong["ok"] and wrong["message"] == DAMAGED


def test_twenty_megabyte_report_opens_in_reasonable_time(page: Page, server: StaticServer) -> None:
    photo = b"\xff\xd8\xff\xe0" + os.urandom(20 * 1024 * 1024)  # incompressible, like real JPEG data
    bundle, _ = _make_bundle({"photos/photo-01.jpg": photo})
    data_key = os.urandom(64)
    sealed = _seal(bundle, _KeySealer(data_key))
    started = time.perf_counter()
    result = _open_in_page(page, server, sealed, {"dataKey": data_key.hex()})
    elapsed = time.perf_counter() - started
    assert result["ok"], result
    assert result["value"]["photos"][0]["sha256hex"] == hashlib.sha256(photo).hexdigest()
    times = {step: round(ms) for step, ms in result["value"]["times"].items()}
    print(f"\n20 MiB report in Chromium: {times} ms; {elapsed:.2f} s including transfer and hashing")
    assert elapsed < 30, "far slower than a recipient would wait"


# --- refusal of damaged containers and bundles ------------------------------------------------------------


def _rezip(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as container:
        for name, data in entries:
            container.writestr(name, data)
    return out.getvalue()


def _entries(sealed: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(sealed)) as container:
        return {name: container.read(name) for name in container.namelist()}


def _with_header(sealed: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    parts = _entries(sealed)
    package = json.loads(parts["package.json"])
    change(package)
    return _rezip(
        [
            ("package.encrypted", parts["package.encrypted"]),
            ("package.json", envelope.canonical_json(package)),
        ]
    )


@pytest.fixture(scope="module")
def good_sealed() -> bytes:
    bundle, _ = _make_bundle({"photos/photo-01.jpg": _jpeg((1, 2, 3))})
    return _seal(bundle, _KeySealer(KEY))


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda package: package["header"].__setitem__(field, value)


SEALED_DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "not a zip": (lambda s: b"%PDF-1.7 " + s[:200], "not a sealed report, or the file is damaged"),
    "cut short": (lambda s: s[: len(s) // 2], "not a sealed report, or the file is damaged"),
    "extra entry": (
        lambda s: _rezip([*_entries(s).items(), ("run-me.sh", b"echo hi")]),
        "not a sealed report (unexpected contents)",
    ),
    "payload missing": (
        lambda s: _rezip([("package.json", _entries(s)["package.json"])]),
        "not a sealed report (unexpected contents)",
    ),
    "other format": (lambda s: _with_header(s, _set("format", "something/else")), "not a sealed report"),
    "version 2": (
        lambda s: _with_header(s, _set("format_version", 2)),
        "unsupported sealed report version 2",
    ),
    "wrong size": (
        lambda s: _with_header(
            s, lambda p: p["header"].__setitem__("payload_size", p["header"]["payload_size"] + 16)
        ),
        "the encrypted payload has the wrong size",
    ),
    "other payload": (
        lambda s: _with_header(s, _set("payload_hmac", "0" * 64)),
        "the encrypted payload does not belong to this header",
    ),
    "stray wrapped key": (
        lambda s: _with_header(s, lambda p: p.__setitem__("wrapped_key", "AAAA")),
        "the wrapped key is missing or out of place",
    ),
    "header not JSON": (
        lambda s: _rezip(
            [("package.encrypted", _entries(s)["package.encrypted"]), ("package.json", b"{nope")]
        ),
        "the report header is not valid JSON",
    ),
}


@pytest.mark.parametrize("damage", SEALED_DAMAGE)
def test_damaged_sealed_files_are_refused(
    page: Page, server: StaticServer, good_sealed: bytes, damage: str
) -> None:
    assert _open_in_page(page, server, good_sealed, {"dataKey": KEY.hex()})["ok"]
    change, expected = SEALED_DAMAGE[damage]
    result = _open_in_page(page, server, change(good_sealed), {"dataKey": KEY.hex()})
    assert not result["ok"]
    assert result["name"] == "SealedFileError"
    assert result["message"].startswith(expected), result["message"]


def test_tampered_payload_fails_authentication(page: Page, server: StaticServer, good_sealed: bytes) -> None:
    # Same size and same tag, so the container checks pass; only the HMAC over the payload can tell.
    parts = _entries(good_sealed)
    payload = _flip(parts["package.encrypted"], 100)
    tampered = _rezip([("package.encrypted", payload), ("package.json", parts["package.json"])])
    result = _open_in_page(page, server, tampered, {"dataKey": KEY.hex()})
    assert not result["ok"] and result["message"] == DAMAGED


def _duplicated_photo() -> bytes:
    bundle, _ = _make_bundle({"photos/photo-01.jpg": _jpeg((5, 5, 5))})
    out = io.BytesIO(bundle)
    with pytest.warns(UserWarning), zipfile.ZipFile(out, "a") as again:
        again.writestr("photos/photo-01.jpg", b"a second photo under the same name")
    return out.getvalue()


def _unlisted_photo() -> bytes:
    listed = {"photos/photo-01.jpg": _jpeg((5, 5, 5))}
    bundle, report = _make_bundle({**listed, "photos/photo-02.jpg": _jpeg((6, 6, 6))})
    parts = {name: data for name, data in _entries(bundle).items() if name != "report.json"}
    report["photos"] = report["photos"][:1]
    return _rezip([("report.json", json.dumps(report).encode()), *parts.items()])


BUNDLE_DAMAGE: dict[str, tuple[Callable[[], bytes], str]] = {
    "unexpected file": (
        lambda: _make_bundle({"photos/photo-01.jpg": b"x"}, extra={"../../evil.sh": b"rm -rf"})[0],
        "the report contains an unexpected file: ../../evil.sh",
    ),
    "missing pdf": (
        lambda: _rezip([(n, d) for n, d in _entries(_make_bundle({})[0]).items() if n != "report.pdf"]),
        "the report is missing report.pdf",
    ),
    "unlisted photo": (_unlisted_photo, "the photos in the report do not match report.json"),
    "duplicate entry": (_duplicated_photo, "the report bundle is damaged (duplicate entries)"),
    "not a zip": (lambda: b"plain text, not a zip", "the report bundle is damaged"),
}


@pytest.mark.parametrize("damage", BUNDLE_DAMAGE)
def test_invalid_bundles_are_refused(page: Page, server: StaticServer, damage: str) -> None:
    make, expected = BUNDLE_DAMAGE[damage]
    result = _open_in_page(page, server, _seal(make(), _KeySealer(KEY)), {"dataKey": KEY.hex()})
    assert not result["ok"]
    assert result["name"] == "BundleError"
    assert result["message"].startswith(expected), result["message"]


# --- nothing from the network -----------------------------------------------------------------------------


def test_modules_import_nothing_from_elsewhere() -> None:
    for path in STATIC.rglob("*.js"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith(("import ", "export ")) and " from " in line:
                source = line.split(" from ", 1)[1].strip(" ;'\"")
                assert source.startswith("."), f"{path.relative_to(STATIC)} imports {source}"


def test_page_requested_only_its_own_origin(
    page: Page, server: StaticServer, requests_seen: list[str]
) -> None:
    assert requests_seen, "the page made no requests at all"
    assert all(url.startswith(server.base + "/") for url in requests_seen), requests_seen
    fetched = {url.removeprefix(server.base) for url in requests_seen}
    assert {"/js/rncryptor.js", "/js/sealed.js", "/vendor/fflate/browser.js"} <= fetched


def test_page_runs_under_a_strict_csp(page: Page) -> None:
    # The modules above ran under this policy, so they need no inline code, no eval and no other origin.
    ran = page.evaluate(
        """() => {
          const s = document.createElement('script');
          s.textContent = 'window.inlineRan = true';
          document.head.append(s);
          return window.inlineRan === true;
        }"""
    )
    assert ran is False
