"""Cloud storage through rclone: Box, Dropbox, Google Drive, OneDrive/SharePoint, S3, WebDAV, SFTP, ...

The admin sets up a remote once with ``rclone config`` (docs/destinations.md). This destination opens the
report in memory and writes its files into ``<remote><root>/<YYYY-MM-DD>/<report-id>/``, the way PicSafe
fills a "PicSafe" folder, so people who browse the storage find reports by day.

No plaintext touches the station's disk: each file is piped to ``rclone rcat`` on stdin, with the
streaming cutoff set just above the file's size so rclone uploads it from its own memory in one request
instead of spooling to a temporary file (which it does for backends without streaming uploads). As a
second guard, rclone's TMPDIR is a private directory on a tmpfs (RAM), removed after every delivery.

The folder is named by the report id, so a retry overwrites the same files rather than adding a copy.
After uploading, the folder is listed and every file's size (and hash, where the backend offers MD5,
SHA-1 or SHA-256) is compared with what was sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from kiosk.destinations.base import DeliveryError, Destination, DestinationConfigBase, Parcel
from kiosk.sealing.sealed_file import SealedHeader

# rclone's own retries stay short: the outbox retries with backoff, and a long inner loop (the default
# ten low-level retries take minutes against a host that is down) would hold up every other delivery.
BASE_FLAGS = ("--ask-password=false", "--low-level-retries", "3", "--retries", "1", "--contimeout", "15s")
# Flags this module sets itself; configuring them would break the no-disk or idempotency guarantees.
_RESERVED_FLAGS = ("--config", "--streaming-upload-cutoff", "--ask-password")
# rclone exits 1 for config, auth and usage errors alike, so the text decides what needs a person.
_PERMANENT = re.compile(
    r"\b40[13]\b|unauthori[sz]ed|forbidden|unable to authenticate|password rejected|permission denied"
    r"|didn't find section in config|invalid_grant|token expired|unknown (flag|shorthand)|access denied"
    r"|knownhosts|host key mismatch|arguments (maximum|minimum)",
    re.IGNORECASE,
)
_RATE_LIMITED = re.compile(r"rate ?limit", re.IGNORECASE)  # Google answers 403 when it means "slow down"
_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\w+ ?: )?")
_HASHES = ("sha256", "sha1", "md5")  # names rclone and hashlib share
# RAM-only places for rclone's TMPDIR: the station's own tmpfs (noswap, deploy/pi/run-kiosk.mount), else
# /dev/shm. Each delivery makes a private 0700 directory there and removes it.
_RAM_DIRS = (Path("/run/kiosk"), Path("/dev/shm"))  # noqa: S108


class RcloneConfig(DestinationConfigBase):
    type: Literal["rclone"]
    remote: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_. -]*:$", description='rclone remote name with colon: "clinicbox:"'
    )
    root: str = Field("PicSafe", description="Folder on the remote (S3: bucket/folder); '' for the top")
    rclone_config: Path = Field(
        Path("/var/lib/kiosk/rclone.conf"),
        description="Written by `rclone config`; writable by the station (rclone saves refreshed tokens)",
    )
    rclone_binary: str = Field("rclone", description="Path of the rclone program")
    extra_flags: list[str] = Field(
        default_factory=list, description='e.g. ["--ca-cert", "/etc/kiosk/ca.pem"]'
    )
    date_timezone: str = Field("UTC", description="Time zone of the YYYY-MM-DD folder, e.g. Australia/Sydney")
    timeout: float = Field(600.0, gt=0, le=3600, description="Seconds one rclone call may take")

    @field_validator("root")
    @classmethod
    def _relative_folder(cls, root: str) -> str:
        root = root.strip("/")
        parts = root.split("/") if root else []
        if any(p in ("", ".", "..") for p in parts) or any(c in root for c in "\\\r\n\0"):
            raise ValueError("must be a plain folder path such as PicSafe or clinic/PicSafe")
        return root

    @field_validator("extra_flags")
    @classmethod
    def _flags_only(cls, flags: list[str]) -> list[str]:
        for flag in flags:
            name = flag.split("=", 1)[0]
            if name in _RESERVED_FLAGS:
                raise ValueError(f"{name} is set by the station")
        if flags and not flags[0].startswith("-"):
            raise ValueError("must start with a flag (such as --ca-cert), not a command or path")
        return flags

    @field_validator("date_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r} (use a name like Europe/London)") from exc
        return name


def upload_order(names: list[str]) -> list[str]:
    """report.json last: a program watching the folder can take its arrival as "the report is complete"."""
    return sorted(names, key=lambda name: (name == "report.json", name))


class RcloneDestination(Destination):
    type_name = "rclone"
    needs_plaintext = True
    config: RcloneConfig

    def folder(self, header: SealedHeader) -> str:
        """``remote:root/YYYY-MM-DD/report-id``: deterministic, so a retry lands on the same files."""
        created = datetime.strptime(header.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        day = created.astimezone(ZoneInfo(self.config.date_timezone)).date().isoformat()
        path = PurePosixPath(self.config.root or ".", day, header.report_id)
        return f"{self.config.remote}{path}"

    def deliver(self, parcel: Parcel) -> str:
        self._check_setup()
        folder = self.folder(parcel.header)
        entries = self.open_bundle(parcel)
        ram_dir = _private_ram_dir()
        try:
            for name in upload_order(list(entries)):
                data = entries[name]
                # The cutoff, in bytes, just above this file's size: rclone reads it all into memory and
                # uploads it as one known-size object, never via a spool file.
                self._rclone(
                    ["--streaming-upload-cutoff", f"{len(data) + 1}B", "rcat", f"{folder}/{name}"],
                    ram_dir,
                    stdin=data,
                    action=f"upload {name}",
                )
            listing = self._rclone(["lsjson", "-R", "--files-only", "--hash", folder], ram_dir, action="list")
        finally:
            if ram_dir is not None:
                shutil.rmtree(ram_dir, ignore_errors=True)
        _verify(entries, listing, folder)
        total = sum(len(data) for data in entries.values())
        return f"{folder}/ {len(entries)} files, {total} bytes, verified: {', '.join(sorted(entries))}"

    def _check_setup(self) -> None:
        config_file = self.config.rclone_config
        try:
            mode = config_file.stat().st_mode
        except OSError as exc:
            raise DeliveryError(
                f"rclone config {config_file} is missing ({exc.strerror}); run `rclone config --config "
                f"{config_file}`",
                permanent=True,
            ) from exc
        if mode & stat.S_IROTH:
            # It holds the cloud account's tokens or passwords.
            raise DeliveryError(
                f"rclone config {config_file} is readable by everyone; run: chmod o-r {config_file}",
                permanent=True,
            )

    def _rclone(self, args: list[str], ram_dir: Path | None, *, action: str, stdin: bytes = b"") -> bytes:
        config = self.config
        command = [config.rclone_binary, "--config", str(config.rclone_config), *BASE_FLAGS]
        command += [*config.extra_flags, *args]
        env = dict(os.environ)
        if ram_dir is not None:
            env["TMPDIR"] = str(ram_dir)
        where = f"rclone {config.remote}"
        try:
            done = subprocess.run(
                command, input=stdin, capture_output=True, timeout=config.timeout, env=env, check=False
            )
        except FileNotFoundError as exc:
            raise DeliveryError(
                f"rclone program {config.rclone_binary} not found (apt install rclone)", permanent=True
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeliveryError(f"{where}: {action} took longer than {config.timeout:g} s") from exc
        if done.returncode == 0:
            return done.stdout
        said = _last_message(done.stderr)
        permanent = done.returncode == 7 or (bool(_PERMANENT.search(said)) and not _RATE_LIMITED.search(said))
        hint = (
            " (check the remote's login with `rclone config reconnect` or its password)" if permanent else ""
        )
        raise DeliveryError(f"{where}: {action} failed: {said}{hint}", permanent=permanent)


def _private_ram_dir() -> Path | None:
    for place in _RAM_DIRS:
        if place.is_dir() and os.access(place, os.W_OK | os.X_OK):
            return Path(tempfile.mkdtemp(prefix="kiosk-rclone-", dir=place))  # mode 0700
    return None


def _last_message(stderr: bytes) -> str:
    """rclone's final error line without its timestamp: the summary of what went wrong."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    errors = [line for line in lines if "NOTICE" not in line] or lines or ["no message"]
    return _LOG_PREFIX.sub("", errors[-1])[:300]


def _verify(entries: dict[str, bytes], listing: bytes, folder: str) -> None:
    try:
        found: dict[str, dict[str, Any]] = {item["Path"]: item for item in json.loads(listing)}
    except (ValueError, TypeError, KeyError) as exc:
        raise DeliveryError(f"rclone {folder}: could not read the folder listing") from exc
    for name, data in entries.items():
        item = found.get(name)
        if item is None:
            raise DeliveryError(f"rclone {folder}: {name} is missing after upload")
        if item.get("Size") != len(data):
            raise DeliveryError(f"rclone {folder}: {name} has {item.get('Size')} bytes, sent {len(data)}")
        hashes = item.get("Hashes") or {}
        for algorithm in _HASHES:
            if hashes.get(algorithm):
                if hashes[algorithm].lower() != hashlib.new(algorithm, data).hexdigest():
                    raise DeliveryError(f"rclone {folder}: {name} differs from what was sent ({algorithm})")
                break
