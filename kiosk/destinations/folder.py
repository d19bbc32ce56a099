"""Folder destination: a mounted SMB share or USB disk receives the sealed file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from kiosk import fsutil
from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.sealing.sealed_file import EXTENSION


class FolderConfig(DestinationConfigBase):
    type: Literal["folder"]
    path: Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FolderDestination(Destination):
    type_name = "folder"
    config: FolderConfig

    def deliver(self, parcel: Parcel) -> str:
        folder = self.config.path
        if not folder.is_dir():
            raise DeliveryError(f"folder {folder} is not available (is the share mounted?)")
        target = folder / f"{parcel.report_id}{EXTENSION}"
        digest = _sha256(parcel.sealed_path)
        # The report id names the file, so a retry after a crash finds its own earlier copy.
        if target.exists() and _sha256(target) == digest:
            return f"{target} sha256:{digest} (already there)"
        try:
            fsutil.atomic_copy(parcel.sealed_path, target, mode=0o640, stable_temp=True)
        except OSError as exc:
            raise DeliveryError(f"cannot write to {folder}: {exc.strerror}") from exc
        return f"{target} sha256:{digest}"
