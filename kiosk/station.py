"""Wiring shared by the touchscreen app and the CLI: the key server client and the destinations."""

from __future__ import annotations

from kiosk.config import Config
from kiosk.destinations import registry
from kiosk.destinations.base import Destination
from kiosk.keyserver_client import StationClient


def keyserver_client(config: Config) -> StationClient | None:
    """The enrolled key server's client, or None before `kiosk enroll`."""
    path = config.credentials_file
    return StationClient.from_file(path) if path.exists() else None


def destinations(config: Config) -> dict[str, Destination]:
    return registry.build_all(config.destination, keyserver_client(config))
