"""`keyserver grant add|list|remove`: who may open reports addressed to someone else."""

from __future__ import annotations

import click

from keyserver import db, users
from keyserver.cli import Context, actor, pass_ctx


@click.group("grant")
def grant() -> None:
    """Policy grants: a role or group may open reports addressed to a recipient ('*' = all)."""


@grant.command("add")
@click.option("--role", type=click.Choice(users.ROLES))
@click.option("--group")
@click.option("--recipient", required=True)
@pass_ctx
def grant_add(c: Context, role: str | None, group: str | None, recipient: str) -> None:
    if bool(role) == bool(group):
        raise click.ClickException("give exactly one of --role or --group")
    subject_type, subject = ("role", role) if role else ("group", group)
    try:
        with db.write(c.engine()) as conn:
            users.add_grant(
                conn, subject_type=subject_type, subject=subject or "", recipient=recipient, actor=actor()
            )
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{subject_type} {subject} may open reports for {recipient.strip().lower()}")


@grant.command("list")
@pass_ctx
def grant_list(c: Context) -> None:
    """One grant a line: its id (for `grant remove`), who, and for which recipient."""
    with db.read(c.engine()) as conn:
        rows = users.list_grants(conn)
    for row in rows:
        click.echo(f"{row['id']:>5}  {row['subject_type']} {row['subject']}  ->  {row['recipient']}")
    if not rows:
        click.echo("no grants (reports open only for the recipients they name)", err=True)


@grant.command("remove")
@click.argument("grant_id", type=int)
@pass_ctx
def grant_remove(c: Context, grant_id: int) -> None:
    """Remove a grant (audited as grant.remove); see `grant list` for the ids."""
    try:
        with db.write(c.engine()) as conn:
            removed = users.remove_grant(conn, grant_id, actor=actor())
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed: {removed['subject_type']} {removed['subject']} -> {removed['recipient']}")
