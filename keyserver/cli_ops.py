"""Operational `keyserver` commands: audit, inbox, backup/restore, decrypt."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, cast

import click

from keyserver import audit, backup, db, inbox
from keyserver.cli import Context, actor, pass_ctx, write_private


def _passphrase(path: str | None, *, confirm: bool) -> str:
    if path:
        return Path(path).read_text().rstrip("\n")
    if not sys.stdin.isatty():
        raise click.ClickException("give --passphrase-file (stdin is not a terminal)")
    return click.prompt("Backup passphrase", hide_input=True, confirmation_prompt=confirm)  # type: ignore[no-any-return]


@click.group("audit")
def audit_group() -> None:
    """The audit log."""


@audit_group.command("verify")
@pass_ctx
def audit_verify(c: Context) -> None:
    """Check the hash chain; prints the head hash (copy it elsewhere to anchor the chain)."""
    with db.read(c.engine()) as conn:
        result = audit.verify(conn)
    for problem in result.problems:
        click.echo(f"BROKEN: {problem}", err=True)
    click.echo(f"{result.records} records, head {result.head_hash}")
    if not result.ok:
        raise click.ClickException("the audit chain does not verify")
    click.echo("audit chain intact")


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Output file (default: standard output).")
@pass_ctx
def audit_export(c: Context, fmt: str, out: str | None) -> None:
    with db.read(c.engine()) as conn:
        records = list(audit.iter_all(conn))
    text = audit.to_csv(records) if fmt == "csv" else audit.to_json(records)
    if out:
        write_private(Path(out), text)
        click.echo(f"{len(records)} records written to {out}", err=True)
    else:
        click.echo(text, nl=False)


@click.group("inbox")
def inbox_group() -> None:
    """The inbox of uploaded sealed reports."""


@inbox_group.command("purge")
@pass_ctx
def inbox_purge(c: Context) -> None:
    """Delete inbox files past the retention period (run from a daily timer)."""
    count = inbox.purge(c.engine(), c.config.effective_inbox_dir, actor=actor())
    click.echo(f"{count} expired report(s) purged")


@click.command("backup")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False))
@pass_ctx
def backup_cmd(c: Context, out: str, passphrase_file: str | None) -> None:
    """Write an encrypted backup of the database and the KEKs (one file, passphrase-protected)."""
    passphrase = _passphrase(passphrase_file, confirm=True)
    try:
        with db.write(c.engine()) as conn:
            blob = backup.create(conn, c.master(), passphrase, actor=actor())
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    path = Path(out)
    with open(path, "wb") as handle:
        handle.write(blob)
    path.chmod(0o600)
    click.echo(f"backup written to {out} ({len(blob)} bytes)")


@click.command("restore")
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False))
@pass_ctx
def restore_cmd(c: Context, backup_file: str, passphrase_file: str | None) -> None:
    """Restore a backup into an empty database (KEKs re-encrypted under this server's master secret)."""
    passphrase = _passphrase(passphrase_file, confirm=False)
    engine = c.engine(migrate=False)
    db.upgrade(engine)
    try:
        with db.write(engine) as conn:
            records = backup.restore(
                conn, c.master(), Path(backup_file).read_bytes(), passphrase, actor=actor()
            )
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"restored; audit chain verified ({records} records)")


@click.command("decrypt")
@click.argument("sealed_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="New directory.")
@click.option("--url", required=True, help="Key server base URL.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), required=True)
def decrypt_cmd(sealed_file: str, out_dir: str, url: str, token_file: str) -> None:
    """Open a sealed report: unwrap over HTTP (audited), decrypt in memory, write the bundle to OUT."""
    from keyserver.decrypt import DecryptError, decrypt_file

    token = Path(token_file).read_text().strip()
    try:
        written = decrypt_file(Path(sealed_file), Path(out_dir), url=url, token=token)
    except DecryptError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(str(path))


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.command("audit")
@click.argument("station_id")
@click.option("--chain", help="Only this chain: its id or a unique prefix (at least 8 hex digits).")
@click.option("--verify", is_flag=True, help="Recompute the station's chains instead of listing them.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (details as the JSON text hashed).")
@click.option("--after", type=int, default=0, show_default=True, help="Only records after this seq.")
@pass_ctx
def station_audit_cmd(
    c: Context, station_id: str, chain: str | None, verify: bool, as_json: bool, after: int
) -> None:
    """The audit trail a station shipped (sign-in, scan, send, wipe...; never patient data).

    One chain per installation of the station (a reinstall on a fresh card starts a new one), oldest
    first; --verify checks every chain.
    """
    from keyserver import station_trails

    listing: list[dict[str, Any]] = []
    with db.read(c.engine()) as conn:
        if not station_trails.known_station(conn, station_id):
            raise click.ClickException(f"no station {station_id}")
        if verify:
            result = station_trails.verify(conn, station_id)
        else:
            chains = station_trails.chains(conn, station_id)
            if chain is not None:
                chains = [i for i in chains if len(chain) >= 8 and i["chain"].startswith(chain.lower())]
                if len(chains) != 1:
                    raise click.ClickException(f"no single chain {chain} for station {station_id}")
            for info in chains:
                records, last = [], after
                while page := station_trails.query(conn, station_id, info["chain"], after=last, limit=1000):
                    records += page
                    last = page[-1]["seq"]
                listing.append({**info, "records": records, "count": info["records"]})
    if verify:
        _print_verify(station_id, result, as_json)
    elif as_json:
        chains_out = [
            {"chain": i["chain"], "last_seq": i["last_seq"], "records": i["records"]} for i in listing
        ]
        click.echo(json.dumps({"station_id": station_id, "chains": chains_out}, indent=1))
    else:
        for info in listing:
            span = f"seq {info['first_seq']}-{info['last_seq']}, {info['count']} records"
            received = f"{info['first_received_at'][:19]}Z to {info['last_received_at'][:19]}Z"
            click.echo(f"chain {info['chain']}: {span}, received {received}")
            for r in info["records"]:
                click.echo(
                    f"{r['seq']:6} {_when(r['at'])} {r['event']:28} {r['report_id'] or '-':36} "
                    f"{r['actor']:12} {r['details']}"
                )


def _print_verify(station_id: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        for r in result["chains"]:
            state = "intact" if r["ok"] else "BROKEN"
            head = f"head seq {r['head_seq']} {r['head_hash']}"
            click.echo(f"chain {r['chain']}: {r['records']} records, {head}: {state}")
    for problem in result["problems"]:
        click.echo(f"BROKEN: {problem}", err=True)
    if not result["ok"]:
        raise click.ClickException(f"the audit trail of station {station_id} does not verify")
    if not as_json:
        click.echo(f"station audit trail intact ({len(result['chains'])} chain(s))")


def register(main: click.Group) -> None:
    for command in (audit_group, inbox_group, backup_cmd, restore_cmd, decrypt_cmd):
        main.add_command(command)
    station_group = cast(click.Group, main.commands["station"])  # defined in cli.py
    station_group.add_command(station_audit_cmd)  # `keyserver station audit STATION_ID`
