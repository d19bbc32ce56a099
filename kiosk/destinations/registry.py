"""Every destination type, in one place: adding a destination is one module plus one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from kiosk.destinations.base import Destination, DestinationConfigBase
from kiosk.destinations.dicomweb import DicomWebConfig, DicomWebDestination
from kiosk.destinations.email import EmailConfig, EmailDestination
from kiosk.destinations.fhir import FhirConfig, FhirDestination
from kiosk.destinations.folder import FolderConfig, FolderDestination
from kiosk.destinations.https import HttpsConfig, HttpsDestination
from kiosk.destinations.keyserver_inbox import (
    REGISTRATION,
    KeyServerInboxConfig,
    KeyServerInboxDestination,
    KeyServerRegistration,
)
from kiosk.destinations.plaintext import bundle_opener
from kiosk.destinations.rclone import RcloneConfig, RcloneDestination
from kiosk.keyserver_client import StationClient

_TYPES: dict[type[DestinationConfigBase], type[Destination]] = {
    FolderConfig: FolderDestination,
    KeyServerInboxConfig: KeyServerInboxDestination,
    EmailConfig: EmailDestination,
    HttpsConfig: HttpsDestination,
    RcloneConfig: RcloneDestination,
    FhirConfig: FhirDestination,
    DicomWebConfig: DicomWebDestination,
}

TYPE_NAMES = frozenset(cls.type_name for cls in _TYPES.values())

# The `type` key picks the model; pydantic's errors then speak of that type's settings only.
DestinationConfig = Annotated[Union[tuple(_TYPES)], Field(discriminator="type")]  # noqa: UP007


def build(config: DestinationConfigBase, *, keyserver: StationClient | None = None) -> Destination:
    """A ready destination; plaintext destinations open parcels with their passphrase or the key server."""
    cls = _TYPES[type(config)]
    opener = None
    if cls.needs_plaintext:
        unwrap = keyserver.delivery_unwrap if keyserver else None
        opener = bundle_opener(passphrase_file=config.passphrase_file, unwrap=unwrap)
    return cls(config, opener, keyserver)


def build_all(
    configs: list[DestinationConfigBase], keyserver: StationClient | None
) -> dict[str, Destination]:
    """Every configured destination, plus the internal key server registration."""
    built = {c.name: build(c, keyserver=keyserver) for c in configs}
    registration = KeyServerInboxConfig(name=REGISTRATION, type="keyserver-inbox")
    built[REGISTRATION] = KeyServerRegistration(registration, None, keyserver)
    return built
