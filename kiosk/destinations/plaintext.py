"""Opening a parcel in memory, for destinations that need the report itself (cloud, FHIR, PACS, ...).

Envelope-sealed parcels need the key server: it releases the data key to the station that sealed the
report, for delivery only, and audits that. Passphrase-sealed parcels open with the destination's own
passphrase. Either way the plaintext bundle exists only in this process's memory while it is uploaded.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from kiosk.destinations.base import DeliveryError, Parcel
from kiosk.destinations.keyserver_inbox import delivery_error
from kiosk.keyserver_client import KeyServerError
from kiosk.report.bundle import InvalidBundle, read_bundle
from kiosk.sealing import passphrase
from kiosk.sealing.rncryptor import InvalidMessage
from kiosk.sealing.sealed_file import InvalidSealedFile, SealedHeader, decrypt_payload, read_sealed

Unwrap = Callable[[SealedHeader, bytes], bytes]
BundleOpener = Callable[[Parcel], dict[str, bytes]]


def bundle_opener(*, passphrase_file: Path | None, unwrap: Unwrap | None) -> BundleOpener:
    def open_bundle(parcel: Parcel) -> dict[str, bytes]:
        try:
            return _open(parcel)
        except DeliveryError:
            raise
        except passphrase.WeakPassphrase as exc:  # unreadable or world-readable file: a person must fix it
            raise DeliveryError(str(exc), permanent=True) from exc
        except (InvalidSealedFile, InvalidMessage, InvalidBundle) as exc:  # the outbox copy is damaged
            raise DeliveryError(f"the sealed report cannot be opened: {exc}", permanent=True) from exc

    def _open(parcel: Parcel) -> dict[str, bytes]:
        plaintext = io.BytesIO()
        with parcel.sealed_path.open("rb") as source:
            sealed = read_sealed(source)
            if sealed.header.encryption == "passphrase":
                if passphrase_file is None:
                    raise DeliveryError(
                        "this report is passphrase-sealed but no passphrase_file is set", permanent=True
                    )
                secret = passphrase.read_file(passphrase_file, check_strength=False)
                decrypt_payload(source, sealed, plaintext, passphrase=secret)
            else:
                if unwrap is None:
                    raise DeliveryError("plaintext delivery needs an enrolled key server", permanent=True)
                assert sealed.wrapped_key is not None
                try:
                    data_key = unwrap(sealed.header, sealed.wrapped_key)
                except (KeyServerError, OSError) as exc:
                    raise delivery_error("releasing the key for delivery", exc) from exc
                decrypt_payload(source, sealed, plaintext, data_key=data_key)
        return read_bundle(plaintext.getvalue())

    return open_bundle
