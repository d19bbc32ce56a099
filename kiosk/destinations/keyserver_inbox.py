"""The key server: its inbox (the default destination) and report registration.

The inbox receives the sealed file as it is; clinicians open it in the key server's page. Registration
sends only the header (no patient data) so the key server's audit shows which station sealed what, when
and for whom, whichever destinations the report went to. Both are idempotent on the report id.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.keyserver_client import KeyServerError

REGISTRATION = "key server registration"


class KeyServerInboxConfig(DestinationConfigBase):
    type: Literal["keyserver-inbox"]

    @model_validator(mode="after")
    def _envelope_only(self) -> KeyServerInboxConfig:
        if self.encryption != "envelope":
            raise ValueError("the key server inbox takes envelope-sealed reports only")
        return self


def delivery_error(action: str, exc: Exception) -> DeliveryError:
    """How a key server failure affects a delivery: refusals need a person (station disabled, report
    revoked, not enrolled); being unreachable, overloaded or rate limited is retried."""
    status = exc.status if isinstance(exc, KeyServerError) else 0
    permanent = 400 <= status < 500 and status not in (408, 425, 429)
    return DeliveryError(f"key server: {action} failed: {exc}", permanent=permanent)


def _call(action: str, call: Any) -> dict[str, Any]:
    try:
        return call()  # type: ignore[no-any-return]
    except (KeyServerError, OSError) as exc:
        raise delivery_error(action, exc) from exc


class KeyServerInboxDestination(Destination):
    type_name = "keyserver-inbox"

    def deliver(self, parcel: Parcel) -> str:
        if self.keyserver is None:
            raise DeliveryError("the station is not enrolled with a key server", permanent=True)
        answer = _call("upload", lambda: self.keyserver.upload_to_inbox(parcel.sealed_path))  # type: ignore[union-attr]
        kept_until = answer.get("expires_at", "?")
        return f"key server inbox, sha256:{answer.get('sha256', '?')}, kept until {kept_until}"


class KeyServerRegistration(Destination):
    """Not configured by the admin: queued automatically for every envelope-sealed report."""

    type_name = "keyserver-registration"

    def deliver(self, parcel: Parcel) -> str:
        if self.keyserver is None:
            raise DeliveryError("the station is not enrolled with a key server", permanent=True)
        answer = _call("registration", lambda: self.keyserver.register_report(parcel.header))  # type: ignore[union-attr]
        return "registered" if answer.get("registered") else f"key server answered {answer}"
