"""Every destination type, in one place: adding a destination is one module plus one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from kiosk.destinations.base import Destination, DestinationConfigBase
from kiosk.destinations.folder import FolderConfig, FolderDestination
from kiosk.destinations.plaintext import Unwrap, bundle_opener

_TYPES: dict[type[DestinationConfigBase], type[Destination]] = {
    FolderConfig: FolderDestination,
}

TYPE_NAMES = frozenset(cls.type_name for cls in _TYPES.values())

if len(_TYPES) > 1:
    DestinationConfig = Annotated[Union[tuple(_TYPES)], Field(discriminator="type")]  # noqa: UP007
else:  # pydantic needs a real union for a discriminator
    DestinationConfig = FolderConfig  # type: ignore[misc]


def build(config: DestinationConfigBase, *, unwrap: Unwrap | None = None) -> Destination:
    """A ready destination; ``unwrap`` (the key server's delivery unwrap) serves plaintext destinations."""
    cls = _TYPES[type(config)]
    if not cls.needs_plaintext:
        return cls(config)
    return cls(config, bundle_opener(passphrase_file=config.passphrase_file, unwrap=unwrap))
