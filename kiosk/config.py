"""Station configuration: one TOML file, validated at start.

Errors name the file, the line and the key, so an IT person editing /boot/firmware/kiosk.toml on a PC can
fix it without reading code.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiosk.destinations.registry import TYPE_NAMES, DestinationConfig
from kiosk.hardware.camera import CameraConfig
from kiosk.hardware.gpio import GpioConfig
from kiosk.patient_lookup import PatientLookupConfig
from kiosk.scan.payload import ScanRule

DEFAULT_CONFIG_PATHS = (Path("/boot/firmware/kiosk.toml"), Path("/etc/kiosk/kiosk.toml"))


class ConfigError(ValueError):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StationConfig(_Section):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    data_dir: Path = Field(description="Sealed files and outbox state only")
    work_dir: Path | None = Field(default=None, description="tmpfs for transient plaintext; RAM if unset")
    software_version: str = "0.1.0"


class KeyServerConfig(_Section):
    url: str = Field(pattern=r"^https?://")
    public_keys_file: Path | None = Field(default=None, description="Written by `kiosk enroll`")


class UiConfig(_Section):
    """`[ui]`: the touchscreen app (kiosk serve)."""

    idle_timeout: float = Field(120.0, ge=3, le=3600, description="seconds without a touch before a wipe")
    idle_warning: float = Field(20.0, ge=1, le=120, description="countdown shown for the last seconds")
    admin_pin_hash: str | None = Field(None, description="argon2 hash of the admin PIN (`kiosk hash-pin`)")
    consent_text_file: Path | None = Field(None, description="the clinic's consent wording (plain text)")
    consent_text_version: str = Field("built-in-1", min_length=1, description="recorded in every report")
    language: str = Field("en", pattern=r"^[a-z]{2}(_[A-Z]{2})?$")
    default_destinations: list[str] = Field(default_factory=list, description="preselected on Send")
    patient_id_check: Literal["none", "nhs-mod11", "gs1-mod10"] = Field(
        "none", description="check digit verified on a typed patient number"
    )
    wedge_max_gap_ms: float = Field(30.0, gt=0, le=500, description="keyboard-wedge scanner key gap")


class StaffMember(_Section):
    """`[[staff]]`: a local staff identity (badge and/or PIN)."""

    id: str = Field(min_length=1, max_length=64)
    name: str | None = None
    role: str | None = None
    badge: str | None = Field(None, description="badge payload or its identifier (e.g. the GSRN)")
    pin_hash: str | None = Field(None, description="argon2 hash of the staff PIN (`kiosk hash-pin`)")


class Config(_Section):
    station: StationConfig
    keyserver: KeyServerConfig | None = None
    destination: list[DestinationConfig] = Field(default_factory=list)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    gpio: GpioConfig | None = None
    ui: UiConfig = Field(default_factory=UiConfig)
    patient_lookup: PatientLookupConfig | None = None  # off unless the section is there
    staff: list[StaffMember] = Field(default_factory=list)
    scan_rule: list[ScanRule] = Field(default_factory=list)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("destination")
    @classmethod
    def _unique_names(cls, destinations: list[DestinationConfig]) -> list[DestinationConfig]:
        names = [d.name for d in destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return destinations

    @model_validator(mode="after")
    def _envelope_needs_keyserver(self) -> Config:
        for dest in self.destination:
            if getattr(dest, "encryption", None) == "envelope" and self.keyserver is None:
                raise ValueError(
                    f"destination {dest.name!r} uses envelope encryption but [keyserver] is missing"
                )
        return self

    def destination_named(self, name: str) -> DestinationConfig:
        for dest in self.destination:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destination) or "none configured"
        raise ConfigError(f"no destination named {name!r} (known: {known})")

    @property
    def credentials_file(self) -> Path:
        """The station's key server credential (0600), written by `kiosk enroll`."""
        return self.station.data_dir / "keyserver-station.json"

    @property
    def public_keys_file(self) -> Path:
        if self.keyserver and self.keyserver.public_keys_file:
            return self.keyserver.public_keys_file
        return self.station.data_dir / "keyserver-keys.json"


def resolve_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("KIOSK_CONFIG"):
        return Path(os.environ["KIOSK_CONFIG"])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    raise ConfigError("no configuration: pass --config FILE or set KIOSK_CONFIG")


def load(path: str | os.PathLike[str] | None = None) -> Config:
    config_path = resolve_path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_path} is not UTF-8 text") from exc
    return parse(text, config_path)


def parse(text: str, source: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(error, text, source) for error in exc.errors())) from exc
    config.source = source
    return config


def _describe(error: Any, text: str, source: Path) -> str:
    location = [part for part in error["loc"] if not _is_union_tag(part)]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        location.append("type")  # the user wrote (or forgot) the type key: point at it
    dotted = ".".join(f"[{p + 1}]" if isinstance(p, int) else str(p) for p in location).replace(".[", "[")
    line = _line_of(text, location)
    where = f"{source}, line {line}" if line else str(source)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required but missing"
    elif error["type"] == "extra_forbidden":
        message = "unknown setting (check the spelling)"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown type {error['ctx']['tag']!r} (known: {error['ctx']['expected_tags']})"
    elif error["type"] == "union_tag_not_found":
        message = "required but missing"
    return f"{where}: {dotted or 'file'}: {message}"


def _is_union_tag(part: object) -> bool:
    # Tagged unions put the tag ("folder", "email", ...) into the location; the user never wrote it.
    return isinstance(part, str) and part in TYPE_NAMES


def _line_of(text: str, location: list[Any]) -> int | None:
    """Best-effort line number of a key path such as ["destination", 0, "path"]."""
    header = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    key_line = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
    table: list[Any] = []
    counts: dict[str, int] = {}
    best: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if match := header.match(line):
            name = match.group(2)
            if match.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                table = [name, counts[name]]
            else:
                table = name.split(".")
            if location[: len(table)] == table:
                best = number
            continue
        if (match := key_line.match(line)) and location[: len(table) + 1] == [*table, match.group(1)]:
            return number
    return best
