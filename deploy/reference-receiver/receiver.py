#!/usr/bin/env python3
"""Reference receiver for the kiosk's "https" destination (docs/destinations.md, "The receiving contract").

Python standard library only, so it runs anywhere with Python 3.11+:

    python3 receiver.py --store /srv/reports --cert server.pem --key server.key --token-file tokens.txt

It accepts one POST per report on --path (default /reports) and stores the body atomically as
``<store>/<report-id>.cpseal`` (sealed) or ``<report-id>.zip`` (plaintext bundle), then answers:

    201 Created    first copy stored                  Location: /reports/<id>, JSON receipt
    200 OK         the identical body again           (a retry after a lost answer)
    409 Conflict   a different body under the same id (the first copy is kept)
    400/401/411/413/415/422  request problems that retrying cannot fix
    503            storage trouble (and the test hook)

``GET /reports/<id>`` returns the stored copy's metadata (never its content); ``GET /healthz`` says ok.
It is a reference: small, strict, and meant to be read; put it behind your own monitoring and backups.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import logging
import os
import re
import ssl
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SEALED_TYPE = "application/vnd.clinical-photo-kiosk.sealed-report+zip"
BUNDLE_TYPE = "application/zip"
SUFFIXES = {SEALED_TYPE: ".cpseal", BUNDLE_TYPE: ".zip"}
REPORT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/=]+):")

log = logging.getLogger("receiver")


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        store: Path,
        *,
        tls: ssl.SSLContext | None = None,
        tokens: list[str] | None = None,
        users: dict[str, str] | None = None,
        path: str = "/reports",
        max_bytes: int = 1 << 30,
    ) -> None:
        super().__init__(address, Handler)
        store.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = store
        self.tls = tls
        self.tokens = tokens or []
        self.users = users or {}
        self.path = path.rstrip("/") or "/reports"
        self.max_bytes = max_bytes
        self.lock = threading.Lock()  # one writer at a time: "first copy wins" stays simple
        # Test hooks (in-process use only): fail the next N POSTs, and remember request headers.
        self.failures_left = 0
        self.failure_status = 503
        self.seen: list[dict[str, str]] = []

    def fail_next(self, count: int, status: int = 503) -> None:
        self.failures_left, self.failure_status = count, status

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow client cannot stall
        # accept() for everyone else.
        if self.tls is not None:
            request.settimeout(30)
            request = self.tls.wrap_socket(request, server_side=True)
        self.RequestHandlerClass(request, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s failed", client_address[0], exc_info=log.isEnabledFor(logging.DEBUG))


class Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"
    timeout = 60
    body_consumed = False

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self._answer(200, {"status": "ok"})
        try:
            self._authorise()
            report_id = self.path.removeprefix(self.server.path + "/")
            meta = self.server.store / f"{report_id}.json"
            if not REPORT_ID.match(report_id) or not meta.exists():
                raise Rejected(404, "no such report")
        except Rejected as exc:
            return self._answer(exc.status, {"error": str(exc)})
        return self._answer(200, json.loads(meta.read_text()))

    def do_POST(self) -> None:
        self.body_consumed = False  # one handler serves every request of a keep-alive connection
        try:
            status, result = self._receive()
        except Rejected as exc:
            self._discard_body()
            self.close_connection = True
            return self._answer(exc.status, {"error": str(exc)}, report_id=self.headers.get("X-Report-Id"))
        except OSError:
            log.exception("storage failed")
            return self._answer(503, {"error": "storage failed, try again"})
        extra = {"Location": f"{self.server.path}/{result['report_id']}"} if status in (200, 201) else {}
        return self._answer(status, result, report_id=result["report_id"], extra=extra)

    def _receive(self) -> tuple[int, dict[str, Any]]:
        server = self.server
        if self.path.split("?")[0].rstrip("/") != server.path:
            raise Rejected(404, f"POST reports to {server.path}")
        self._authorise()
        report_id = self.headers.get("X-Report-Id", "")
        if not REPORT_ID.match(report_id) or self.headers.get("Idempotency-Key") != report_id:
            raise Rejected(400, "X-Report-Id and Idempotency-Key must both be the report id")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in SUFFIXES:
            raise Rejected(415, f"send {SEALED_TYPE} or {BUNDLE_TYPE}")
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
            raise Rejected(411, "send Content-Length")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError as exc:
            raise Rejected(400, "Content-Length is not a number") from exc
        if length <= 0 or length > server.max_bytes:
            raise Rejected(413, "body empty or too large")
        body = self.rfile.read(length)
        self.body_consumed = True
        if len(body) != length:
            raise Rejected(400, "body shorter than Content-Length")
        server.seen.append({k: v for k, v in self.headers.items() if k.lower() != "authorization"})
        if server.failures_left > 0:
            server.failures_left -= 1
            raise Rejected(server.failure_status, "failing on purpose (test hook)")
        digest = hashlib.sha256(body).digest()
        claimed = DIGEST.search(self.headers.get("Content-Digest", ""))
        if claimed and base64.b64decode(claimed.group(1)) != digest:
            raise Rejected(400, "Content-Digest does not match the body")
        _check_body_names(body, content_type, report_id)
        return _store(server, report_id, body, digest.hex(), content_type)

    def _authorise(self) -> None:
        server = self.server
        if not server.tokens and not server.users:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and any(hmac.compare_digest(value, t) for t in server.tokens):
            return
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except ValueError:
                user, password = "", ""
            expected = server.users.get(user)
            if expected is not None and hmac.compare_digest(password, expected):
                return
        self._discard_body()
        raise Rejected(401, "credentials missing or wrong")

    def _discard_body(self) -> None:
        # Read (and drop) a refused body, so the client sees our answer rather than a broken pipe.
        if self.body_consumed:
            return
        self.body_consumed = True
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if 0 < length <= self.server.max_bytes:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)

    def _answer(
        self,
        status: int,
        payload: dict[str, Any],
        *,
        report_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if report_id and REPORT_ID.match(report_id):
            self.send_header("X-Report-Id", report_id)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="reports"')
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _check_body_names(body: bytes, content_type: str, report_id: str) -> None:
    """The body must be what it claims, for this report: catches misrouted or mislabelled uploads."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            if content_type == SEALED_TYPE:
                inner = json.loads(archive.read("package.json"))["header"]["report_id"]
            else:
                inner = json.loads(archive.read("report.json"))["report_id"]
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise Rejected(422, f"the body is not a readable {content_type} report") from exc
    if inner != report_id:
        raise Rejected(422, "the body belongs to a different report id")


def _store(
    server: ReceiverServer, report_id: str, body: bytes, sha256: str, content_type: str
) -> tuple[int, dict[str, Any]]:
    store = server.store
    target = store / f"{report_id}{SUFFIXES[content_type]}"
    meta_path = store / f"{report_id}.json"
    with server.lock:
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta["sha256"] == sha256 and meta["content_type"] == content_type:
                return 200, {**meta, "status": "already-stored"}
            return 409, {"report_id": report_id, "status": "conflict", "receipt": meta["receipt"]}
        _write_atomically(target, body)
        meta = {
            "report_id": report_id,
            "content_type": content_type,
            "size": len(body),
            "sha256": sha256,
            "receipt": f"rcpt-{sha256[:24]}",
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # The metadata file is written last: its presence means "stored completely".
        _write_atomically(meta_path, json.dumps(meta, sort_keys=True).encode())
    log.info("stored report %s (%d bytes)", report_id, len(body))
    return 201, {**meta, "status": "stored"}


def _write_atomically(target: Path, data: bytes) -> None:
    temp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _secret_lines(path: Path) -> list[str]:
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise SystemExit(f"{path} must be readable by its owner only (chmod 600 {path})")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--store", type=Path, required=True, help="directory for received reports")
    parser.add_argument("--path", default="/reports", help="URL path that receives POSTs")
    parser.add_argument("--cert", type=Path, help="PEM certificate chain (HTTPS)")
    parser.add_argument("--key", type=Path, help="PEM private key (HTTPS)")
    parser.add_argument("--token-file", type=Path, help="accepted bearer tokens, one per line")
    parser.add_argument("--users-file", type=Path, help="basic-auth users, one 'name:password' per line")
    parser.add_argument("--insecure-http", action="store_true", help="plain HTTP (behind a TLS proxy)")
    parser.add_argument("--max-bytes", type=int, default=1 << 30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    tls = None
    if args.cert and args.key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    elif not args.insecure_http:
        parser.error("give --cert and --key, or --insecure-http behind a TLS-terminating proxy")
    tokens = _secret_lines(args.token_file) if args.token_file else []
    users = dict(line.split(":", 1) for line in _secret_lines(args.users_file)) if args.users_file else {}
    server = ReceiverServer(
        (args.host, args.port),
        args.store,
        tls=tls,
        tokens=tokens,
        users=users,
        path=args.path,
        max_bytes=args.max_bytes,
    )
    scheme = "https" if tls else "http"
    print(f"receiving on {scheme}://{args.host}:{server.server_address[1]}{server.path}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
