"""Organisation HTTPS endpoint: POST the sealed report (or, for endpoints that decrypt nothing, the bundle).

The receiving contract (docs/destinations.md, deploy/reference-receiver/receiver.py) in short: one POST
per report carrying ``Idempotency-Key`` and ``X-Report-Id`` = the report id; 2xx stores it, 409 naming the
same report id means "already have it", other 4xx need a person, 5xx and network errors are retried.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import re
import zipfile
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.destinations.transport import network_error, read_secret_file, tls_context
from kiosk.sealing.sealed_file import EXTENSION, MEDIA_TYPE

BUNDLE_MEDIA_TYPE = "application/zip"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 header field name
# Headers the destination sets itself; letting configuration override them would break the contract.
_RESERVED = frozenset(
    name.lower()
    for name in (
        "Authorization",
        "Content-Digest",
        "Content-Disposition",
        "Content-Length",
        "Content-Type",
        "Host",
        "Idempotency-Key",
        "Transfer-Encoding",
        "X-Report-Id",
        "X-Station-Id",
    )
)
# 4xx answers that a later attempt can succeed with (timeouts, "too early", rate limits).
_RETRYABLE_4XX = frozenset({408, 425, 429})
_MAX_ANSWER_BYTES = 64 * 1024


class HttpsConfig(DestinationConfigBase):
    type: Literal["https"]
    url: str = Field(description="Endpoint that receives one POST per report, e.g. https://host/reports")
    mode: Literal["sealed", "plaintext"] = Field(
        "sealed", description="sealed: the .cpseal file as it is; plaintext: the opened bundle as a zip"
    )
    allow_http: bool = Field(False, description="Permit http:// for sealed reports without credentials")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers")
    token_file: Path | None = Field(None, description="Bearer token, one line (Authorization: Bearer)")
    username: str | None = Field(None, description="HTTP basic auth user (with password_file)")
    password_file: Path | None = Field(None, description="HTTP basic auth password, one line")
    ca_file: Path | None = Field(None, description="PEM CA certificate(s) for a private CA")
    timeout: float = Field(60.0, gt=0, le=900, description="Seconds without progress before giving up")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https:// URL with a host name")
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        if parts.username or parts.password:
            raise ValueError("put credentials in token_file or username/password_file, not in the URL")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return url

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED:
                raise ValueError(f"{name} is set by the station and cannot be configured")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of header {name} must be one line")
            if not value.isascii():
                raise ValueError(f"the value of header {name} must be ASCII")
        return headers

    @model_validator(mode="after")
    def _transport_rules(self) -> HttpsConfig:
        if self.token_file is not None and self.username is not None:
            raise ValueError("choose token_file or username/password_file, not both")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if urlsplit(self.url).scheme == "http":
            # Patient data never travels unencrypted; a sealed file may, if the admin says so explicitly.
            if self.mode == "plaintext":
                raise ValueError('mode = "plaintext" sends patient data, so the URL must be https://')
            if not self.allow_http:
                raise ValueError("plain http:// needs allow_http = true (the sealed file is still encrypted)")
            if self.token_file is not None or self.username is not None:
                raise ValueError("credentials would travel in clear over http://; use https://")
        return self


def bundle_zip(entries: dict[str, bytes], created_at: str) -> bytes:
    """The bundle entries as a zip, byte-identical on every attempt (fixed order and times), so a
    receiver sees a retry as the same body."""
    when = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ").timetuple()[:6]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=when)
            compressible = name.endswith((".json", ".xml"))
            info.compress_type = zipfile.ZIP_DEFLATED if compressible else zipfile.ZIP_STORED
            info.external_attr = 0o600 << 16
            archive.writestr(info, entries[name])
    return out.getvalue()


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


class HttpsDestination(Destination):
    type_name = "https"
    # Class-wide because the registry decides per class; sealed mode simply never opens the parcel.
    needs_plaintext = True
    config: HttpsConfig

    def deliver(self, parcel: Parcel) -> str:
        report_id = parcel.report_id
        authorization = self._authorization()  # first: a bad secret file fails before any work
        if self.config.mode == "plaintext":
            data = bundle_zip(self.open_bundle(parcel), parcel.header.created_at)
            content_type, filename = BUNDLE_MEDIA_TYPE, f"{report_id}.zip"
            body: BinaryIO = io.BytesIO(data)
            size, digest = len(data), hashlib.sha256(data).digest()
        else:
            content_type, filename = MEDIA_TYPE, f"{report_id}{EXTENSION}"
            try:
                digest, size = _file_sha256(parcel.sealed_path), parcel.sealed_path.stat().st_size
                body = parcel.sealed_path.open("rb")
            except OSError as exc:
                raise DeliveryError(f"cannot read the sealed file: {exc.strerror}") from exc
        headers = {
            **self.config.headers,
            "Content-Type": content_type,
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:",
            "Idempotency-Key": report_id,
            "X-Report-Id": report_id,
            "X-Station-Id": parcel.header.station_id,
            "User-Agent": "clinical-photo-kiosk",
            **authorization,
        }
        with body:
            status, reason, answer_headers, answer = self._post(headers, body)
        return self._judge(report_id, status, reason, answer_headers, answer)

    def _authorization(self) -> dict[str, str]:
        if self.config.token_file is not None:
            return {"Authorization": f"Bearer {read_secret_file(self.config.token_file, 'token')}"}
        if self.config.username is not None and self.config.password_file is not None:
            password = read_secret_file(self.config.password_file, "password")
            pair = f"{self.config.username}:{password}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        return {}

    def _post(
        self, headers: dict[str, str], body: BinaryIO
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        parts = urlsplit(self.config.url)
        where = f"{parts.scheme}://{parts.netloc}"
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname,  # type: ignore[arg-type]
                parts.port,
                timeout=self.config.timeout,
                context=tls_context(self.config.ca_file),
            )
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.config.timeout)  # type: ignore[arg-type]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            # A server may answer (401, 413, ...) and close before reading the whole body; its answer
            # says more than the broken pipe, so read it before giving up.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(_MAX_ANSWER_BYTES)
            return response.status, response.reason, response.headers, answer
        except OSError as exc:  # below HTTP: TLS, timeouts, DNS, refused connections
            hint = "check the URL, or set ca_file for a private CA"
            raise network_error(where, exc, timeout=self.config.timeout, hint=hint) from exc
        except http.client.HTTPException as exc:
            raise DeliveryError(f"{where}: the connection broke ({type(exc).__name__})") from exc
        finally:
            connection.close()

    def _judge(
        self, report_id: str, status: int, reason: str, headers: http.client.HTTPMessage, answer: bytes
    ) -> str:
        # Only the status line goes into messages: a server's error body may echo what it was sent.
        said = f"HTTP {status} {reason}".strip()
        if 200 <= status < 300:
            return self._receipt(said, headers, answer)
        if status == 409 and _names_report(headers, answer, report_id):
            return self._receipt(f"{said} (already delivered)", headers, answer)
        if 300 <= status < 400:
            moved = headers.get("Location", "elsewhere")
            raise DeliveryError(
                f"{self.config.url}: {said}, the endpoint moved to {moved}; update url", permanent=True
            )
        if status in (401, 403):
            raise DeliveryError(f"{self.config.url}: {said}: the credentials were refused", permanent=True)
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise DeliveryError(f"{self.config.url}: {said}: the endpoint refused the report", permanent=True)
        raise DeliveryError(f"{self.config.url}: {said}, will retry")

    def _receipt(self, said: str, headers: http.client.HTTPMessage, answer: bytes) -> str:
        parts = [f"{self.config.url} {said}"]
        if headers.get("Location"):
            parts.append(f"location={headers['Location']}")
        receipt = headers.get("X-Receipt-Id") or _json_field(answer, "receipt")
        if receipt:
            parts.append(f"receipt={receipt[:200]}")
        return " ".join(parts)


def _json_field(answer: bytes, name: str) -> str | None:
    try:
        value = json.loads(answer).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _names_report(headers: http.client.HTTPMessage, answer: bytes, report_id: str) -> bool:
    """A 409 counts as "already delivered" only when it names this report (header or JSON body)."""
    return report_id in (headers.get("X-Report-Id"), _json_field(answer, "report_id"))
