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


def enroll(config: Config, url: str, code: str) -> int:
    """Enroll with the key server (one-time code) and store its public keys; returns the current key version.

    Shared by `kiosk enroll` and the touchscreen's admin screen.
    """
    from kiosk import keyring
    from kiosk.keyserver_client import enroll as enroll_station
    from kiosk.sealing.envelope import PublicKek

    credentials = enroll_station(url, code, config.station.id, credentials_path=config.credentials_file)
    keys = [PublicKek.from_dict(k) for k in credentials["public_keys"]]
    keyring.save(config.public_keys_file, keys, current_version=keys[0].version)
    return keys[0].version
