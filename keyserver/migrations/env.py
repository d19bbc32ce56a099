"""Alembic environment: runs on the connection the key server hands over, or on sqlalchemy.url."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from keyserver.models import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _migrate(conn)


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    # render_as_batch: SQLite can only alter tables by copying them; batch mode does that for us.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
