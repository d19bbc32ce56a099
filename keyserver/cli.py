"""The ``keyserver`` command: serve, migrations, keys, users, tokens, stations (operations in cli_ops.py)."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine

from keyserver import db, keks, sessions, stations, users
from keyserver.config import Config, ConfigError, load_config
from keyserver.masterkey import MasterKey, MasterKeyError, load_master_key


class Context:
    """Lazily built config, engine and master key, so `--help` needs none of them."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._engine: Engine | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._config

    def engine(self, *, migrate: bool = True) -> Engine:
        if self._engine is None:
            self._engine = db.engine_for(self.config)
            if migrate and self.config.is_sqlite:
                db.upgrade(self._engine)
            elif migrate and not db.is_current(self._engine):
                raise click.ClickException("the database schema is not current: run `keyserver db upgrade`")
        return self._engine

    def master(self) -> MasterKey:
        try:
            return load_master_key(self.config)
        except MasterKeyError as exc:
            raise click.ClickException(str(exc)) from exc


def actor() -> str:
    """Who ran the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar="KEYSERVER_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $KEYSERVER_CONFIG, else built-in defaults).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Clinical Photo Kiosk key server."""
    ctx.obj = Context(config_path)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8470, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
@pass_ctx
def serve(c: Context, host: str, port: int, threads: int) -> None:
    """Serve with waitress (dev/demo; see docs/keyserver.md for gunicorn in production)."""
    import waitress

    from keyserver.app import create_app

    app = create_app(c.config, engine=c.engine())
    click.echo(f"key server listening on http://{host}:{port}", err=True)
    waitress.serve(
        app, host=host, port=port, threads=threads, ident="keyserver", clear_untrusted_proxy_headers=True
    )


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@pass_ctx
def db_upgrade(c: Context) -> None:
    """Apply the migrations shipped with the key server."""
    db.upgrade(c.engine(migrate=False))
    click.echo("database schema is current")


@main.group()
def kek() -> None:
    """Key-encryption keys."""


@kek.command("rotate")
@click.option(
    "--if-due", is_flag=True, help="Only rotate when the active key is older than the rotation period."
)
@pass_ctx
def kek_rotate(c: Context, if_due: bool) -> None:
    """Create a new active KEK version (the previous one is retired, still unwraps)."""
    engine, master = c.engine(), c.master()
    with db.write(engine) as conn:
        if if_due and not keks.rotation_due(conn, c.config.kek_rotation_days):
            click.echo("rotation not due")
            return
        version = keks.rotate(conn, master, actor=actor())
    click.echo(f"KEK version {version} is now active")


@kek.command("list")
@pass_ctx
def kek_list(c: Context) -> None:
    with db.read(c.engine()) as conn:
        for info in keks.list_keks(conn):
            click.echo(f"{info.version:>4}  {info.status:<9}  {info.created_at:%Y-%m-%d}  {info.fingerprint}")


@kek.command("destroy")
@click.argument("version", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def kek_destroy(c: Context, version: int, yes: bool) -> None:
    """Crypto-shred a retired KEK: every report sealed under it becomes unreadable, forever."""
    if not yes:
        click.confirm(
            f"Destroy KEK version {version}? Reports sealed under it can never be opened again", abort=True
        )
    try:
        with db.write(c.engine()) as conn:
            keks.destroy(conn, version, actor=actor(), retention_days=c.config.kek_retention_days)
    except keks.KekError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"KEK version {version} destroyed")


def _read_secret_file(path: str | None, prompt: str) -> str:
    if path:
        return Path(path).read_text().rstrip("\n")
    if not sys.stdin.isatty():
        raise click.ClickException("give --password-file (stdin is not a terminal)")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)  # type: ignore[no-any-return]


@main.group()
def user() -> None:
    """Users (admin, clinician, auditor)."""


@user.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(users.ROLES), required=True)
@click.option("--email")
@click.option("--name", "display_name")
@click.option("--group", "groups", multiple=True, help="Group membership (repeatable).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--totp", is_flag=True, help="Require a TOTP code at login; prints the provisioning URI.")
@pass_ctx
def user_add(
    c: Context,
    username: str,
    role: str,
    email: str | None,
    display_name: str | None,
    groups: tuple[str, ...],
    password_file: str | None,
    totp: bool,
) -> None:
    """Add a user (the first admin is created this way)."""
    password = _read_secret_file(password_file, "Password")
    try:
        with db.write(c.engine()) as conn:
            users.add_user(
                conn,
                username=username,
                password=password,
                role=role,
                email=email,
                display_name=display_name,
                group_names=list(groups),
                actor=actor(),
            )
            uri = users.set_totp(conn, c.master(), username, actor=actor()) if totp else None
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {username.lower()} added ({role})")
    if uri:
        click.echo(f"TOTP provisioning URI (shown once): {uri}")


@user.command("list")
@pass_ctx
def user_list(c: Context) -> None:
    """Users with role, status (active, disabled, locked out), TOTP and e-mail."""
    with db.read(c.engine()) as conn:
        locked = sessions.locked_usernames(conn, c.config)
        for u in users.list_users(conn):
            state = "disabled" if u["disabled"] else "locked" if u["username"] in locked else "active"
            totp = "totp" if u["totp"] else "-"
            click.echo(f"{u['username']:<24} {u['role']:<10} {state:<8} {totp:<4} {u['email'] or ''}")


@user.command("disable")
@click.argument("username")
@pass_ctx
def user_disable(c: Context, username: str) -> None:
    try:
        with db.write(c.engine()) as conn:
            users.set_disabled(conn, username, True, actor=actor())
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {username} disabled (tokens revoked, sessions ended)")


@user.command("enable")
@click.argument("username")
@pass_ctx
def user_enable(c: Context, username: str) -> None:
    """Re-enable a disabled user (sign-in only: create new API tokens if needed)."""
    try:
        with db.write(c.engine()) as conn:
            users.set_disabled(conn, username, False, actor=actor())
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {username.lower()} enabled (old API tokens stay revoked)")


@user.command("unlock")
@click.argument("username")
@click.option("--address", help="Also clear the lockout of this client address.")
@pass_ctx
def user_unlock(c: Context, username: str, address: str | None) -> None:
    """Clear a user's login lockout after too many failed attempts."""
    try:
        with db.write(c.engine()) as conn:
            cleared = sessions.unlock(conn, username, actor=actor(), address=address)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    name = username.lower()
    click.echo(f"login lockout of {name} cleared" if cleared else f"{name} was not locked out")


@user.command("totp")
@click.argument("username")
@click.option("--remove", is_flag=True, help="Turn TOTP off instead (e.g. a lost phone).")
@pass_ctx
def user_totp(c: Context, username: str, remove: bool) -> None:
    """Enable (or reset) TOTP for a user; prints the provisioning URI once."""
    try:
        with db.write(c.engine()) as conn:
            if remove:
                users.clear_totp(conn, username, actor=actor())
            else:
                uri = users.set_totp(conn, c.master(), username, actor=actor())
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"TOTP turned off for {username.lower()}" if remove else uri)


@main.group()
def token() -> None:
    """User API tokens (for `keyserver decrypt` and scripts)."""


@token.command("create")
@click.argument("username")
@click.option("--name", help="A label for the token.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the token to this file (0600).")
@pass_ctx
def token_create(c: Context, username: str, name: str | None, out: str | None) -> None:
    """Create an API token; it is shown (or written) once and stored only as a hash."""
    try:
        with db.write(c.engine()) as conn:
            value = users.create_token(conn, username, actor=actor(), name=name)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    if out:
        write_private(Path(out), value + "\n")
        click.echo(f"token written to {out}")
    else:
        click.echo(value)


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


@main.group()
def station() -> None:
    """Stations."""


@station.command("list")
@pass_ctx
def station_list(c: Context) -> None:
    with db.read(c.engine()) as conn:
        for s in stations.list_stations(conn):
            click.echo(f"{s['station_id']:<24} {s['status']:<9} enrolled {s['enrolled_at'] or '-'}")


@station.command("disable")
@click.argument("station_id")
@pass_ctx
def station_disable(c: Context, station_id: str) -> None:
    try:
        with db.write(c.engine()) as conn:
            stations.set_status(conn, station_id, "disabled", actor=actor())
    except stations.EnrollmentError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"station {station_id} disabled")


@station.command("enroll-code")
@click.option("--station", "station_id", help="Bind the code to this station id (re-enrollment).")
@click.option("--minutes", type=int, help="Validity (default from config).")
@pass_ctx
def station_enroll_code(c: Context, station_id: str | None, minutes: int | None) -> None:
    """Create a one-time enrollment code for a station."""
    try:
        with db.write(c.engine()) as conn:
            code, expires = stations.create_code(
                conn,
                actor=actor(),
                minutes=minutes or c.config.enrollment_code_minutes,
                station_id=station_id,
            )
    except stations.EnrollmentError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(code)
    click.echo(f"valid until {expires:%Y-%m-%d %H:%M} UTC, once", err=True)


def _register_ops() -> None:
    from keyserver import cli_grants, cli_ops, health

    cli_ops.register(main)
    main.add_command(cli_grants.grant)
    main.add_command(health.doctor_command)


_register_ops()


def run(argv: list[str] | None = None) -> Any:
    return main.main(args=argv, prog_name="keyserver", standalone_mode=False)
