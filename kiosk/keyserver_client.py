"""Station-side client of the key server (standard library only, so the station needs no extra package).

    creds = enroll(url, code, station_id, credentials_path=path)   # once, with an admin's code
    client = StationClient.from_file(path)
    keys = client.fetch_public_keys()                               # seal to keys[0]
    client.register_report(header)                                  # each sealed report's header
    client.upload_to_inbox(sealed_path)                             # deliver to the key server inbox
    data_key = client.delivery_unwrap(header, wrapped_key)          # only reports this station sealed
    client.ship_audit(chain, records)                               # the station's own audit records

Errors from the server raise KeyServerError with the HTTP status and the server's reason code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kiosk.sealing import envelope
from kiosk.sealing.sealed_file import MEDIA_TYPE, SealedHeader

TIMEOUT_S = 30.0
# Audit shipping runs inside the outbox worker's round: a slow key server must not hold deliveries long.
AUDIT_TIMEOUT_S = 10.0


class KeyServerError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"key server refused ({status} {reason}): {message}")
        self.status, self.reason, self.message = status, reason, message


def request_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    data: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = TIMEOUT_S,
) -> Any:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = envelope.canonical_json(body)
    if data is not None:
        headers["Content-Type"] = content_type
    if not url.startswith(("http://", "https://")):
        raise ValueError("the key server URL must be http:// or https://")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read())
            reason, message = payload.get("error", "error"), payload.get("message", "")
        except (ValueError, AttributeError):
            reason, message = "error", exc.reason
        raise KeyServerError(exc.code, str(reason), str(message)) from None
    except urllib.error.URLError as exc:
        raise KeyServerError(0, "unreachable", f"cannot reach the key server: {exc.reason}") from None


def _header_dict(header: SealedHeader | dict[str, Any]) -> dict[str, Any]:
    return header.as_dict() if isinstance(header, SealedHeader) else header


def _wrapped_text(wrapped_key: bytes | str) -> str:
    return wrapped_key if isinstance(wrapped_key, str) else envelope.b64encode(wrapped_key)


def save_credentials(path: Path, credentials: dict[str, Any]) -> None:
    """Write the credential file atomically with mode 0600 (it holds the station token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(credentials, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_credentials(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


def enroll(url: str, code: str, station_id: str, *, credentials_path: Path | None = None) -> dict[str, Any]:
    """Enroll with a one-time code; returns (and optionally saves, 0600) the station credentials."""
    base = url.rstrip("/")
    answer = request_json("POST", f"{base}/v1/stations/enroll", body={"code": code, "station_id": station_id})
    keys = [
        envelope.PublicKek.from_dict(k).to_dict() for k in answer["public_keys"]
    ]  # validates fingerprints
    credentials = {
        "key_server_url": base,
        "station_id": answer["station_id"],
        "token": answer["token"],
        "public_keys": keys,
        "enrolled_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if credentials_path is not None:
        save_credentials(Path(credentials_path), credentials)
    return credentials


def fetch_public_keys(url: str) -> list[envelope.PublicKek]:
    """The key server's public KEKs, newest (the one to seal to) first."""
    answer = request_json("GET", f"{url.rstrip('/')}/v1/keys")
    return [envelope.PublicKek.from_dict(k) for k in answer["keys"]]


def unwrap(url: str, token: str, header: SealedHeader | dict[str, Any], wrapped_key: bytes | str) -> bytes:
    """Recipient unwrap with a user API token (keyserver decrypt); the server audits before answering."""
    body = {"header": _header_dict(header), "wrapped_key": _wrapped_text(wrapped_key)}
    answer = request_json("POST", f"{url.rstrip('/')}/v1/unwrap", token=token, body=body)
    return envelope.b64decode(answer["data_key"])


class StationClient:
    def __init__(self, url: str, token: str, station_id: str) -> None:
        self.url, self.token, self.station_id = url.rstrip("/"), token, station_id

    @classmethod
    def from_credentials(cls, credentials: dict[str, Any]) -> StationClient:
        return cls(credentials["key_server_url"], credentials["token"], credentials["station_id"])

    @classmethod
    def from_file(cls, path: Path) -> StationClient:
        return cls.from_credentials(load_credentials(path))

    def fetch_public_keys(self) -> list[envelope.PublicKek]:
        return fetch_public_keys(self.url)

    def register_report(self, header: SealedHeader | dict[str, Any]) -> dict[str, Any]:
        body = {"header": _header_dict(header)}
        return request_json("POST", f"{self.url}/v1/reports", token=self.token, body=body)  # type: ignore[no-any-return]

    def delivery_unwrap(self, header: SealedHeader | dict[str, Any], wrapped_key: bytes | str) -> bytes:
        body = {"header": _header_dict(header), "wrapped_key": _wrapped_text(wrapped_key)}
        answer = request_json("POST", f"{self.url}/v1/delivery/unwrap", token=self.token, body=body)
        return envelope.b64decode(answer["data_key"])

    def upload_to_inbox(self, sealed_path: Path) -> dict[str, Any]:
        """Upload a .cpseal file; idempotent (the same file again returns the same receipt)."""
        data = Path(sealed_path).read_bytes()
        return request_json(  # type: ignore[no-any-return]
            "POST", f"{self.url}/v1/inbox", token=self.token, data=data, content_type=MEDIA_TYPE
        )

    def ship_audit(self, chain: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Send consecutive audit records (kiosk.audit.exported) of the chain whose seq-1 record has the
        hash `chain`; idempotent for records already there. A chain the server has not seen starts at seq 1.

        Returns {chain, accepted, last_seq, last_hash}; an empty list only asks where the server's copy of
        the chain ends (last_seq 0 for a chain it does not hold).
        """
        return request_json(  # type: ignore[no-any-return]
            "POST",
            f"{self.url}/v1/stations/audit",
            token=self.token,
            body={"chain": chain, "records": records},
            timeout=AUDIT_TIMEOUT_S,
        )
