"""What the FHIR and DICOMweb destinations share: endpoint settings, one HTTP exchange, and the report.

Both deliver the report itself (not the sealed file) to a clinical system over HTTP, so both need the same
guard rails: TLS except on loopback, credentials read from files (never inline in kiosk.toml), a timeout,
and one rule for which failures a person must fix (permanent) and which the outbox retries (transient).
Error messages name hosts and HTTP statuses only: server bodies can echo patient identifiers, so they are
never copied into a message or a log.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiosk.destinations.base import DeliveryError, DestinationConfigBase
from kiosk.destinations.transport import https_base_url, read_secret_file, tls_context
from kiosk.report.model import Report


class BearerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer"]
    token_file: Path


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password_file: Path


Auth = Annotated[BearerAuth | BasicAuth, Field(discriminator="type")]


class HttpEndpointConfig(DestinationConfigBase):
    """Settings common to HTTP destinations that receive plaintext reports."""

    base_url: str = Field(description="https://…; plain http is accepted for loopback test servers only")
    auth: Auth | None = None
    timeout: float = Field(default=60.0, gt=0, le=600, description="Seconds per HTTP exchange")
    ca_file: Path | None = Field(default=None, description="PEM bundle that signs the server's certificate")

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        return https_base_url(value, "base_url")  # photos and identifiers must not cross in clear text


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def auth_header(auth: BearerAuth | BasicAuth | None) -> dict[str, str]:
    # Read at every delivery so a rotated token or password takes effect without a restart.
    if auth is None:
        return {}
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {read_secret_file(auth.token_file, 'token')}"}
    pair = f"{auth.username}:{read_secret_file(auth.password_file, 'password')}".encode()
    return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}


def request(
    config: HttpEndpointConfig,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    service: str,
) -> Response:
    """One HTTP exchange; network and TLS failures become DeliveryErrors, HTTP statuses are returned."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    where = f"{service} at {host}:{parts.port}" if parts.port else f"{service} at {host}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = tls_context(config.ca_file)
        connection = http.client.HTTPSConnection(host, parts.port, timeout=config.timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=config.timeout)
    all_headers = {"User-Agent": "clinical-photo-kiosk", **auth_header(config.auth), **(headers or {})}
    try:
        connection.request(method, target, body=body, headers=all_headers)
        reply = connection.getresponse()
        data = reply.read()
        return Response(reply.status, reply.getheader("Content-Type", ""), data)
    except ssl.SSLCertVerificationError as exc:
        # A certificate the kiosk does not trust needs a person (ca_file, or the server's certificate).
        raise DeliveryError(
            f"{where}: TLS certificate not trusted ({exc.verify_message})", permanent=True
        ) from exc
    except TimeoutError as exc:
        raise DeliveryError(f"{where} did not answer within {config.timeout:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise DeliveryError(f"cannot reach {where}: {reason}") from exc
    finally:
        connection.close()


def status_error(status: int, what: str, detail: str = "") -> DeliveryError:
    """The DeliveryError for a non-2xx status: config and validation problems are permanent."""
    suffix = f"; {detail}" if detail else ""
    if status in (401, 403):
        return DeliveryError(
            f"{what}: authentication refused (HTTP {status}); check auth{suffix}", permanent=True
        )
    # Busy, rate-limited, conflicting concurrent writes (409/412), server errors: all may pass by themselves.
    if status in (408, 409, 412, 425, 429) or status >= 500:
        return DeliveryError(f"{what}: server answered HTTP {status}, will retry{suffix}")
    return DeliveryError(f"{what}: rejected (HTTP {status}){suffix}", permanent=True)


def load_report(entries: dict[str, bytes]) -> Report:
    """The report model from an opened bundle, with the photo, signature bytes put back in place."""
    try:
        data = json.loads(entries["report.json"])
        for photo in data["photos"]:
            photo["jpeg"] = entries[photo["file"]]
        signature = data["consent"].get("signature_file")
        if signature:
            data["consent"]["signature_png"] = entries[signature]
        return Report.model_validate(data)
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        # The sealed bundle was validated when it was made; failing here means a version mismatch.
        raise DeliveryError(
            f"the opened report cannot be read ({type(exc).__name__}); is the station up to date?",
            permanent=True,
        ) from exc
