"""The one interface every destination implements.

A destination receives a sealed file that is already durable in the outbox and answers with a receipt,
or raises DeliveryError. Delivery must be idempotent on the report id: the outbox may retry after a crash
between "sent" and "recorded", and the destination must not keep a second copy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiosk.keyserver_client import StationClient
from kiosk.sealing.sealed_file import SealedHeader


class DeliveryError(Exception):
    """Delivery failed; ``permanent`` failures need a person (bad config), others are retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class DestinationConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=60, description="Shown on the send screen")
    encryption: Literal["envelope", "passphrase"] = "envelope"
    passphrase_file: Path | None = None
    recipients: list[str] = Field(default_factory=list, description="Key server users or groups")

    @model_validator(mode="after")
    def _passphrase_file_matches_mode(self) -> DestinationConfigBase:
        if self.encryption == "passphrase" and self.passphrase_file is None:
            raise ValueError("passphrase encryption needs passphrase_file")
        if self.encryption == "envelope" and self.passphrase_file is not None:
            raise ValueError('passphrase_file is only used with encryption = "passphrase"')
        return self

    @property
    def sealing_key(self) -> tuple[str, Path | None]:
        """Destinations with equal keys can share one sealed file."""
        return (self.encryption, self.passphrase_file)


@dataclass(frozen=True)
class Parcel:
    report_id: str
    sealed_path: Path
    header: SealedHeader
    # Per-delivery choices stored with the outbox row (e.g. the email recipients a nurse picked), the same
    # on every retry. Empty for most destinations; each destination reads only its own keys.
    params: Mapping[str, Any] = field(default_factory=dict)


class Destination(ABC):
    """One transport. Subclasses that deliver the report itself (not the sealed file) set
    ``needs_plaintext`` and call ``self.open_bundle(parcel)`` for the bundle's entries, in memory."""

    type_name: ClassVar[str]
    needs_plaintext: ClassVar[bool] = False

    def __init__(
        self,
        config: DestinationConfigBase,
        open_bundle: Callable[[Parcel], dict[str, bytes]] | None = None,
        keyserver: StationClient | None = None,
    ) -> None:
        self.config = config
        self._open_bundle = open_bundle
        self.keyserver = keyserver  # the enrolled key server's client, when there is one

    def open_bundle(self, parcel: Parcel) -> dict[str, bytes]:
        if self._open_bundle is None:
            raise DeliveryError(f"destination {self.name} cannot open reports here", permanent=True)
        return self._open_bundle(parcel)

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def deliver(self, parcel: Parcel) -> str:
        """Deliver, idempotently; return a receipt (where it went, what the far side confirmed)."""
