"""The one path from captured data to queued sealed files, shared by the touchscreen and `kiosk send`.

    photos + identities + consent -> Report (metadata stripped) -> sealed file(s) -> outbox

Destinations that share a sealing key (the envelope, or one passphrase file) share one sealed file.
Nothing here writes plaintext: the bundle streams straight into the RNCryptor encryptor.
Per-delivery parameters (the email recipients chosen for this report) are checked before sealing and
queued with the deliveries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kiosk import fsutil, keyring
from kiosk.config import Config
from kiosk.destinations.base import DestinationConfigBase
from kiosk.destinations.email import EmailConfig
from kiosk.destinations.keyserver_inbox import REGISTRATION
from kiosk.outbox.store import Outbox
from kiosk.report.bundle import write_bundle
from kiosk.report.jpeg_strip import prepare_photo
from kiosk.report.model import BodySite, Consent, Patient, Photo, Report, Staff, Station, make_photo, utc_now
from kiosk.sealing import passphrase
from kiosk.sealing.sealed_file import EnvelopeSealer, PassphraseSealer, SealedHeader, Sealer, write_sealed


class SealError(Exception):
    """Sealing or queueing failed; nothing was queued and the session should be kept for a retry."""


@dataclass
class PhotoInput:
    data: bytes
    name: str
    captured_at: datetime = field(default_factory=utc_now)
    body_site: BodySite | None = None
    notes: str = ""


def assemble_report(
    *,
    station: Station,
    staff: Staff,
    patient: Patient,
    consent: Consent,
    photos: list[PhotoInput],
    notes: str = "",
) -> Report:
    """Strip and describe every photo, then build the validated report (raises InvalidPhoto, ValueError)."""
    records: list[Photo] = []
    for index, photo in enumerate(photos, start=1):
        clean = prepare_photo(photo.data, photo.name)
        records.append(
            make_photo(
                index,
                clean.jpeg,
                clean.width,
                clean.height,
                photo.captured_at,
                body_site=photo.body_site,
                notes=photo.notes,
            )
        )
    return Report(station=station, staff=staff, patient=patient, consent=consent, photos=records, notes=notes)


def header_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _sealer(destination: DestinationConfigBase, config: Config) -> Sealer:
    if destination.encryption == "passphrase":
        assert destination.passphrase_file is not None
        return PassphraseSealer(passphrase.read_file(destination.passphrase_file))
    return EnvelopeSealer(keyring.current(config.public_keys_file))


def delivery_params(
    destinations: list[DestinationConfigBase], given: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each destination's checked delivery parameters. Only email takes any (its recipients); raises
    ValueError (email.RecipientProblem for recipients) when they do not fit the destination's settings."""
    names = {d.name for d in destinations}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"parameters for destinations not chosen: {', '.join(unknown)}")
    out: dict[str, dict[str, Any]] = {}
    for destination in destinations:
        if isinstance(destination, EmailConfig):
            checked = destination.delivery_params(given.get(destination.name))
            if checked:
                out[destination.name] = checked
        elif given.get(destination.name):
            raise ValueError(f"destination {destination.name!r} takes no delivery parameters")
    return out


def seal_and_queue(
    report: Report,
    destinations: list[DestinationConfigBase],
    config: Config,
    outbox: Outbox,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, SealedHeader]:
    """Seal ``report`` once per sealing key and queue it for every destination; all or nothing.

    ``params``: per destination name, choices made for this report (``{"to": [...]}`` for an email
    destination with ``ask_recipients``); checked before anything is sealed.
    """
    if not destinations:
        raise SealError("choose at least one destination")
    try:
        checked = delivery_params(destinations, params or {})
    except ValueError as exc:
        raise SealError(str(exc)) from exc
    groups: dict[tuple[str, Path | None], list[DestinationConfigBase]] = defaultdict(list)
    for destination in destinations:
        groups[destination.sealing_key].append(destination)

    headers: dict[Path, SealedHeader] = {}
    routes: dict[str, Path] = {}
    try:
        for variant, members in enumerate(groups.values(), start=1):
            sealer = _sealer(members[0], config)
            path = outbox.sealed_path(report.report_id, variant)
            recipients = sorted({r for m in members for r in m.recipients})
            with fsutil.atomic_writer(path) as handle:
                headers[path] = write_sealed(
                    handle,
                    lambda sink: write_bundle(report, sink),
                    sealer,
                    report_id=report.report_id,
                    station_id=report.station.id,
                    created_at=header_time(report.created_at),
                    recipients=recipients,
                )
            routes.update({m.name: path for m in members})
            if isinstance(sealer, EnvelopeSealer) and config.credentials_file.exists():
                routes[REGISTRATION] = path  # the key server's audit learns of every envelope report
        outbox.enqueue(report.report_id, headers, routes, checked)
    except (OSError, ValueError) as exc:
        for path in headers:
            path.unlink(missing_ok=True)
        raise SealError(_plain_reason(exc)) from exc
    except BaseException:
        for path in headers:
            path.unlink(missing_ok=True)
        raise
    return {name: headers[path] for name, path in routes.items() if name != REGISTRATION}


def _plain_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == 28:
        return "the station's disk is full"
    if isinstance(exc, OSError):
        return f"the station could not write the sealed report ({exc.strerror})"
    return str(exc)
