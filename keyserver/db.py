"""Engine set-up for both backends, write transactions, and Alembic migrations shipped in the package."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError

from keyserver.config import Config

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration; tests check it matches migrations/versions. Knowing it here lets every command
# check the schema with one query instead of loading Alembic (which costs a fifth of a second).
HEAD_REVISION = "0002"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


# One lock per SQLite engine: writers of one process queue here instead of in SQLite's busy handler, whose
# sleeps (up to 100 ms) would dominate latency. Writers in other processes still meet BEGIN IMMEDIATE.
_sqlite_write_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_readers: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=20,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        _configure_sqlite(engine, sqlite_synchronous)
        _sqlite_write_locks[engine] = threading.Lock()
        return engine
    # No pre-ping (a round trip per checkout on the hot path); recycle instead, and retry is the client's.
    engine = create_engine(url, pool_size=pool_size, max_overflow=20, pool_recycle=1800)
    # Reads go through a sibling engine whose connections stay in autocommit mode: no BEGIN/COMMIT round
    # trips and no isolation-level switching per checkout on the hot path.
    reader = create_engine(
        url, pool_size=pool_size, max_overflow=20, pool_recycle=1800, isolation_level="AUTOCOMMIT"
    )
    _readers[engine] = reader
    event.listen(engine, "engine_disposed", lambda _e: reader.dispose())
    return engine


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit BEGIN is deferred only).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Write transactions take SQLite's write lock up front: that is what serializes audit appends,
        # and it avoids the deadlock of two deferred transactions both upgrading to writers.
        if conn.get_execution_options().get("ks_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A transaction that may append to the audit chain; commits on success, rolls back on error."""
    lock = _sqlite_write_locks.get(engine)
    with lock or contextlib.nullcontext(), engine.connect() as conn:
        conn = conn.execution_options(ks_write=True)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """Reads only. On PostgreSQL in autocommit mode: no BEGIN/COMMIT round trips on the hot path."""
    reader = _readers.get(engine)
    if reader is None:
        with engine.connect() as conn, conn.begin():
            yield conn
    else:
        with reader.connect() as conn:
            yield conn


def psycopg_engine(engine: Engine) -> bool:
    """PostgreSQL through psycopg 3: the backend where the hot path runs on the driver directly."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# pg_advisory_xact_lock key that serializes migrations ("ksmigrat" in ASCII): any 64-bit constant no other
# code in the database uses.
MIGRATION_LOCK = 0x6B736D6967726174


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent, and safe when several instances start at once).

    The migrations run in one transaction that first takes a database-wide lock: PostgreSQL's transaction
    advisory lock, SQLite's write lock (BEGIN IMMEDIATE through write()). A second instance waits there;
    once it has the lock, Alembic reads the version the first one committed and has nothing left to do.
    The lock ends with the transaction, also when the process dies.
    """
    if is_current(engine):
        return
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with write(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DatabaseError:
        return None  # no alembic_version table yet: an empty database


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == HEAD_REVISION


def engine_for(config: Config) -> Engine:
    if config.is_sqlite:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return make_engine(config.effective_database_url, sqlite_synchronous=config.sqlite_synchronous)
