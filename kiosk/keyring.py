"""The key server's public keys as the station stores them (written by `kiosk enroll`).

File format: {"key_server_url": str, "current_version": int, "keys": [PublicKek.to_dict(), ...]}
"""

from __future__ import annotations

import json
from pathlib import Path

from kiosk import fsutil
from kiosk.sealing.envelope import PublicKek


class KeyringError(ValueError):
    pass


def save(path: Path, keys: list[PublicKek], current_version: int) -> None:
    if current_version not in {k.version for k in keys}:
        raise KeyringError(f"current key version {current_version} is not among the keys")
    document = {
        "key_server_url": keys[0].key_server_url,
        "current_version": current_version,
        "keys": [k.to_dict() for k in keys],
    }
    fsutil.atomic_write(path, lambda f: f.write(json.dumps(document, indent=2).encode()), mode=0o644)


def current(path: Path) -> PublicKek:
    """The key new reports are sealed to."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        keys = {int(k["version"]): PublicKek.from_dict(k) for k in document["keys"]}
        return keys[int(document["current_version"])]
    except FileNotFoundError as exc:
        raise KeyringError(
            "the station is not enrolled with a key server (no public key); run `kiosk enroll`"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyringError(f"the key server public key file {path} is damaged: {exc}") from exc
