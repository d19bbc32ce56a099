"""`kiosk` command line: the same pipeline the touchscreen uses, for integrators and tests.

Exit codes: 0 done, 1 refused or failed (a message says why; nothing was written or queued),
2 usage error, 3 queued but not yet delivered to every destination (the outbox keeps retrying).
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
from datetime import date
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from kiosk import audit_shipping, keyring, station
from kiosk import config as config_module
from kiosk.destinations.base import DeliveryError
from kiosk.keyserver_client import KeyServerError
from kiosk.outbox.sender import drain
from kiosk.outbox.store import Outbox
from kiosk.outbox.worker import OutboxWorker
from kiosk.pipeline import PhotoInput, SealError, assemble_report, seal_and_queue
from kiosk.report.bundle import InvalidBundle, extract_bundle, read_bundle
from kiosk.report.jpeg_strip import InvalidPhoto
from kiosk.report.model import PURPOSES, BodySite, Consent, Patient, Staff, Station, utc_now
from kiosk.sealing import passphrase, rncryptor
from kiosk.sealing.sealed_file import InvalidSealedFile, decrypt_payload, read_sealed

EXIT_QUEUED = 3
_EXPECTED_ERRORS = (
    config_module.ConfigError,
    InvalidPhoto,
    SealError,
    keyring.KeyringError,
    passphrase.WeakPassphrase,
    InvalidSealedFile,
    rncryptor.InvalidMessage,
    InvalidBundle,
    DeliveryError,
    FileExistsError,
    KeyServerError,
)


def _plain_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "input"
        lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid report: " + "; ".join(lines)


class _Group(click.Group):
    """Turns every expected failure into one clear line and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            raise click.ClickException(_plain_validation_error(exc)) from exc
        except _EXPECTED_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="kiosk.toml (or $KIOSK_CONFIG)"
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress (report ids only, never patient data).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Clinical photo station."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def _config(ctx: click.Context) -> config_module.Config:
    return config_module.load(ctx.obj["config_path"])


def _read_photo(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidPhoto(f"cannot read photo {path}: {exc.strerror}") from exc


def _parse_site(text: str) -> BodySite:
    """CODE:Display[:laterality[:view]], e.g. 40983000:Skin of lower leg:left:front."""
    parts = text.split(":")
    if len(parts) < 2:
        raise click.BadParameter(f"{text!r}: use SNOMED-CODE:Display[:left|right|bilateral[:front|back]]")
    fields: dict[str, Any] = {"code": parts[0], "display": parts[1]}
    if len(parts) > 2 and parts[2]:
        fields["laterality"] = parts[2]
    if len(parts) > 3 and parts[3]:
        fields["view"] = parts[3]
    return BodySite(**fields)


def _consent_from_file(path: Path) -> Consent:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read consent file {path}: {exc}") from exc
    signature = data.pop("signature_png", None)
    if signature:
        data["signature_png"] = (path.parent / signature).read_bytes()
    data.setdefault("recorded_at", utc_now())
    return Consent(**data)


@main.command()
@click.option("--patient-id", required=True, help="MRN or other patient identifier.")
@click.option("--patient-issuer", help="Assigning authority of the identifier.")
@click.option("--patient-name")
@click.option("--birth-date", type=click.DateTime(formats=["%Y-%m-%d"]))
@click.option("--staff-id", default="cli", show_default=True, help="Staff member responsible.")
@click.option("--staff-name")
@click.option("--consent", "consent_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--consent-method", type=click.Choice(["verbal", "written", "clinical_necessity"]))
@click.option(
    "--consenter",
    type=click.Choice(["patient", "guardian", "substitute_decision_maker", "none"]),
    default="patient",
    show_default=True,
)
@click.option("--consenter-name")
@click.option("--purpose", "purposes", multiple=True, type=click.Choice(PURPOSES), help="Consented (repeat).")
@click.option("--exception-reason")
@click.option(
    "--signature", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Signature PNG."
)
@click.option("--consent-text-version", default="cli", show_default=True)
@click.option("--photo", "photos", multiple=True, required=True, help="JPEG file (repeat, in order).")
@click.option("--site", "sites", multiple=True, help="Body site for the photo in the same position.")
@click.option("--photo-note", "photo_notes", multiple=True, help="Note for the photo in the same position.")
@click.option("--notes", default="", help="Notes for the whole report.")
@click.option("--destination", "destinations", multiple=True, required=True, help="Configured name (repeat).")
@click.option("--wait", default=30.0, show_default=True, help="Seconds to wait for delivery before exiting.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def send(ctx: click.Context, **opts: Any) -> None:
    """Build, seal and queue a report, then deliver it."""
    config = _config(ctx)
    chosen = [config.destination_named(name) for name in opts["destinations"]]
    if len(opts["sites"]) > len(opts["photos"]) or len(opts["photo_notes"]) > len(opts["photos"]):
        raise click.UsageError("give at most one --site and one --photo-note per --photo")
    if opts["consent_file"]:
        consent = _consent_from_file(opts["consent_file"])
    elif opts["consent_method"]:
        consent = Consent(
            consenter=opts["consenter"],
            consenter_name=opts["consenter_name"],
            method=opts["consent_method"],
            witness_staff_id=opts["staff_id"] if opts["consent_method"] == "verbal" else None,
            purposes={p: p in opts["purposes"] for p in PURPOSES},
            exception_reason=opts["exception_reason"],
            text_version=opts["consent_text_version"],
            recorded_at=utc_now(),
            signature_png=opts["signature"].read_bytes() if opts["signature"] else None,
        )
    else:
        raise click.UsageError("record consent with --consent FILE or --consent-method")
    photos = [
        PhotoInput(
            data=_read_photo(path),
            name=path,
            body_site=_parse_site(opts["sites"][i]) if i < len(opts["sites"]) else None,
            notes=opts["photo_notes"][i] if i < len(opts["photo_notes"]) else "",
        )
        for i, path in enumerate(opts["photos"])
    ]
    birth: date | None = opts["birth_date"].date() if opts["birth_date"] else None
    report = assemble_report(
        station=Station(id=config.station.id, software_version=config.station.software_version, device="cli"),
        staff=Staff(id=opts["staff_id"], name=opts["staff_name"]),
        patient=Patient(
            mrn=opts["patient_id"],
            issuer=opts["patient_issuer"],
            name=opts["patient_name"],
            birth_date=birth,
            id_source="cli",
        ),
        consent=consent,
        photos=photos,
        notes=opts["notes"],
    )
    outbox = Outbox(config.station.data_dir)
    try:
        seal_and_queue(report, chosen, config, outbox)
        targets = station.destinations(config)
        delivered = drain(outbox, targets, timeout=opts["wait"], report_id=report.report_id)
        states = {d.destination: d for d in outbox.deliveries() if d.report_id == report.report_id}
    finally:
        outbox.close()
    _print_send_result(report.report_id, states, opts["as_json"])
    if not delivered:
        ctx.exit(EXIT_QUEUED)


def _print_send_result(report_id: str, states: dict[str, Any], as_json: bool) -> None:
    if as_json:
        result = {
            "report_id": report_id,
            "deliveries": {
                name: {"state": d.state, "receipt": d.receipt, "error": d.last_error}
                for name, d in states.items()
            },
        }
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"report {report_id} sealed and queued")
    for name, d in sorted(states.items()):
        detail = d.receipt if d.state == "delivered" else (d.last_error or "waiting")
        click.echo(f"  {name}: {d.state} ({detail})")


@main.group()
def report() -> None:
    """Look at sealed report files."""


@report.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(file: Path) -> None:
    """Show the header of a sealed report (decrypts nothing)."""
    with file.open("rb") as handle:
        sealed = read_sealed(handle)
    click.echo(json.dumps(sealed.header.as_dict(), indent=2, sort_keys=True))


@report.command(name="open")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--passphrase-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
def open_report(file: Path, passphrase_file: Path, out_dir: Path) -> None:
    """Open a passphrase-sealed report into a new folder (nothing is written if it is damaged)."""
    with file.open("rb") as handle:
        sealed = read_sealed(handle)
        if sealed.header.encryption != "passphrase":
            raise click.ClickException(
                "this report is sealed to the key server; open it in the key server's page "
                "or with `keyserver decrypt`"
            )
        secret = passphrase.read_file(passphrase_file, check_strength=False)
        plaintext = io.BytesIO()
        decrypt_payload(handle, sealed, plaintext, passphrase=secret)
    written = extract_bundle(read_bundle(plaintext.getvalue()), out_dir)
    click.echo(f"report {sealed.header.report_id} opened into {out_dir} ({len(written)} files)")


@main.group(name="passphrase")
def passphrase_group() -> None:
    """Static-key passphrases for passphrase-sealed destinations."""


@passphrase_group.command(name="new")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def passphrase_new(file: Path) -> None:
    """Create FILE (mode 0600) holding a fresh 256-bit passphrase."""
    passphrase.write_new_file(file)
    click.echo(f"wrote a new passphrase to {file}; give the same file to the receiving endpoint")


@main.group()
def outbox() -> None:
    """Reports waiting to be delivered."""


@outbox.command(name="list")
@click.pass_context
def outbox_list(ctx: click.Context) -> None:
    """One line per delivery that is not finished; email recipients chosen per report as a count only."""
    store = Outbox(_config(ctx).station.data_dir)
    try:
        pending = store.deliveries(states=("pending", "sending", "failed"))
    finally:
        store.close()
    for d in pending:
        recipients = f"  recipients={d.recipient_count}" if d.recipient_count is not None else ""
        click.echo(
            f"{d.report_id}  {d.destination:20}  {d.state:8}  attempts={d.attempts}{recipients}  "
            f"{d.last_error or ''}"
        )
    if not pending:
        click.echo("the outbox is empty")


@outbox.command(name="retry")
@click.argument("report_id", required=False)
@click.pass_context
def outbox_retry(ctx: click.Context, report_id: str | None) -> None:
    """Retry now (every waiting report, or one), including ones that failed permanently."""
    store = Outbox(_config(ctx).station.data_dir)
    try:
        count = store.retry(report_id)
    finally:
        store.close()
    click.echo(f"{count} deliveries will be retried by the running station")


@outbox.command(name="drop")
@click.argument("report_id")
@click.option("--destination", help="Only this destination (default: every undelivered one).")
@click.option("--by", "actor", required=True, help="Who decides (recorded in the audit).")
@click.confirmation_option(prompt="The report will never reach these destinations and is wiped. Continue?")
@click.pass_context
def outbox_drop(ctx: click.Context, report_id: str, destination: str | None, actor: str) -> None:
    """Give up on a report's deliveries (audited); its sealed file is wiped."""
    store = Outbox(_config(ctx).station.data_dir)
    try:
        count = store.drop(report_id, destination, actor=actor)
    finally:
        store.close()
    if not count:
        raise click.ClickException(f"no undelivered deliveries for report {report_id}")
    click.echo(f"dropped {count} deliveries of report {report_id}")


@outbox.command(name="run")
@click.pass_context
def outbox_run(ctx: click.Context) -> None:
    """Deliver in the foreground until interrupted (the station app runs the same worker)."""
    config = _config(ctx)
    data_dir = config.station.data_dir
    shipper = audit_shipping.shipper(data_dir, station.keyserver_client(config))
    worker = OutboxWorker(data_dir, station.destinations(config), after_round=shipper)
    worker.start()
    click.echo("delivering; press Ctrl-C to stop")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        worker.stop()


@outbox.command(name="audit")
@click.pass_context
def outbox_audit(ctx: click.Context) -> None:
    """Verify the station's audit chain and print it (report ids and events only)."""
    store = Outbox(_config(ctx).station.data_dir)
    try:
        problems = store.verify_audit()
        for record in store.audit_records():
            click.echo(
                f"{record.seq:6} {record.event:28} {record.report_id or '-':36} {record.actor:12} "
                f"{json.dumps(record.details)}"
            )
    finally:
        store.close()
    if problems:
        raise click.ClickException("the audit chain is broken: " + "; ".join(problems))
    click.echo("audit chain intact")


@outbox.command(name="ship-audit")
@click.pass_context
def outbox_ship_audit(ctx: click.Context) -> None:
    """Ship the station's audit records to the key server now (the running station does it by itself)."""
    config = _config(ctx)
    client = station.keyserver_client(config)
    if client is None:
        raise click.ClickException("the station is not enrolled; run `kiosk enroll` first")
    try:
        accepted = audit_shipping.ship(config.station.data_dir, client)
    except OSError as exc:  # a connection broken mid-answer; KeyServerError is reported by _Group
        raise click.ClickException(f"cannot reach the key server: {exc}") from exc
    except audit_shipping.BrokenChain as exc:
        raise click.ClickException(f"the station's audit chain cannot be shipped: {exc}") from exc
    left = audit_shipping.backlog(config.station.data_dir)
    click.echo(f"{accepted} audit records shipped; the key server holds them up to seq {left.shipped_seq}")


@main.command(name="enroll")
@click.option("--key-server", "url", required=True, help="The key server's URL (https in production).")
@click.option("--code", required=True, help="One-time enrollment code from the key server's admin page.")
@click.pass_context
def enroll_command(ctx: click.Context, url: str, code: str) -> None:
    """Enroll this station with the key server and fetch its public keys."""
    config = _config(ctx)
    version = station.enroll(config, url, code)
    click.echo(f"station {config.station.id} enrolled; sealing to key version {version}")
    click.echo("restart the station app (systemctl restart kiosk) so that it uses the new credential")


@main.command(name="refresh-keys")
@click.pass_context
def refresh_keys(ctx: click.Context) -> None:
    """Fetch the key server's current public keys (after a rotation)."""
    config = _config(ctx)
    client = station.keyserver_client(config)
    if client is None:
        raise click.ClickException("the station is not enrolled; run `kiosk enroll` first")
    keys = client.fetch_public_keys()
    keyring.save(config.public_keys_file, keys, current_version=keys[0].version)
    click.echo(f"sealing to key version {keys[0].version}")


@main.command(name="check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration file and print a summary."""
    config = _config(ctx)
    click.echo(
        f"{config.source}: valid; station {config.station.id}, {len(config.destination)} destination(s)"
    )


from kiosk.scan.cli import scan_command  # noqa: E402  (kept apart: owned by the scan module)

main.add_command(scan_command, name="scan")

from kiosk.doctor import doctor_command  # noqa: E402  (owned by kiosk/doctor.py)

main.add_command(doctor_command, name="doctor")

from kiosk.app.cli import register as register_app_commands  # noqa: E402  (owned by kiosk/app)

register_app_commands(main)  # `kiosk serve`, `kiosk hash-pin`


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
