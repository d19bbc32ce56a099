"""Every destination type, in one place: adding a destination is one module plus one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from kiosk.destinations.base import Destination, DestinationConfigBase
from kiosk.destinations.folder import FolderConfig, FolderDestination

_TYPES: dict[type[DestinationConfigBase], type[Destination]] = {
    FolderConfig: FolderDestination,
}

TYPE_NAMES = frozenset(cls.type_name for cls in _TYPES.values())

if len(_TYPES) > 1:
    DestinationConfig = Annotated[Union[tuple(_TYPES)], Field(discriminator="type")]  # noqa: UP007
else:  # pydantic needs a real union for a discriminator
    DestinationConfig = FolderConfig  # type: ignore[misc]


def build(config: DestinationConfigBase) -> Destination:
    return _TYPES[type(config)](config)
