"""Database schema (SQLAlchemy Core). Alembic migrations in keyserver/migrations create exactly this.

Nothing here holds patient data: report headers carry ids, station, time, staff recipients and key
metadata only; the inbox stores sealed files on disk and their hashes here.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Times are timezone-aware UTC everywhere; SQLite stores them as text, PostgreSQL as timestamptz.
TS = DateTime(timezone=True)

keks = Table(
    "keks",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("public_key", LargeBinary(32), nullable=False),
    # AES-256-GCM(master key, nonce, raw private key, AAD = version); NULL once destroyed (crypto-shredding).
    Column("private_key_enc", LargeBinary, nullable=True),
    Column("status", String(16), nullable=False),  # active | retired | destroyed
    Column("created_at", TS, nullable=False),
    Column("retired_at", TS, nullable=True),
    Column("destroyed_at", TS, nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("email", String(254), nullable=True, unique=True),
    Column("display_name", String(128), nullable=True),
    Column("role", String(16), nullable=False),  # admin | clinician | auditor
    Column("password_hash", String(255), nullable=False),
    Column("totp_secret_enc", LargeBinary, nullable=True),  # encrypted under the master key
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", TS, nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
)

user_groups = Table(
    "user_groups",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)

# A policy grant: members of a role or group may open reports addressed to `recipient` ("*" = all).
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject_type", String(8), nullable=False),  # role | group
    Column("subject", String(64), nullable=False),
    Column("recipient", String(254), nullable=False),
    UniqueConstraint("subject_type", "subject", "recipient"),
)

stations = Table(
    "stations",
    metadata,
    Column("station_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # active | disabled
    Column("created_at", TS, nullable=False),
    Column("enrolled_at", TS, nullable=True),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    # SHA-256 of a 256-bit random token: enough against guessing, and cheap on the hot path (not argon2).
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # user | station
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("station_id", String(64), ForeignKey("stations.station_id", ondelete="CASCADE"), nullable=True),
    Column("name", String(64), nullable=True),
    Column("created_at", TS, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

enrollment_codes = Table(
    "enrollment_codes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code_hash", String(64), nullable=False, unique=True),
    Column("station_id", String(64), nullable=True),  # bound: only this station (re-enrollment)
    Column("created_by", String(64), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
    Column("used_by", String(64), nullable=True),
)

reports = Table(
    "reports",
    metadata,
    Column("report_id", String(36), primary_key=True),
    Column("station_id", String(64), nullable=False),
    Column("created_at", String(20), nullable=False),  # as in the header
    Column("registered_at", TS, nullable=False),
    Column("kek_version", Integer, nullable=True),
    Column("header", JSON, nullable=False),
    Column("header_sha256", String(64), nullable=False),
    Column("revoked_at", TS, nullable=True),
    Column("revoked_by", String(64), nullable=True),
    Column("revoked_reason", String(256), nullable=True),
)

# One row per header recipient, lower-cased, so "reports addressed to me" is an indexed query.
report_recipients = Table(
    "report_recipients",
    metadata,
    Column("report_id", String(36), ForeignKey("reports.report_id", ondelete="CASCADE"), primary_key=True),
    Column("recipient", String(254), primary_key=True, index=True),
)

inbox_files = Table(
    "inbox_files",
    metadata,
    Column("report_id", String(36), ForeignKey("reports.report_id", ondelete="CASCADE"), primary_key=True),
    Column("station_id", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("stored_name", String(128), nullable=False),
    Column("uploaded_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False, index=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),  # ISO 8601 UTC with microseconds: hashed exactly as stored
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("report_id", String(36), nullable=True, index=True),
    Column("outcome", String(16), nullable=False),
    Column("details", Text, nullable=False),  # canonical JSON, never PHI
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The chain head: one row, locked FOR UPDATE on PostgreSQL to serialize appends; also lets `audit verify`
# notice records deleted from the end of the chain.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

# The stations' own hash-chained audit trails (kiosk/audit.py), shipped by each station: sign-in, scan,
# capture, send, wipe, admin actions; never patient data. Each row is stored exactly as the station hashed
# it, so `station_trails.verify` recomputes the station's own hashes. A station has one chain per
# installation (a reinstall on a fresh card starts a new one), named by the hash of its seq-1 record. No
# foreign key to `stations`: an audit trail outlives anything that happens to the station's row.
station_audit = Table(
    "station_audit",
    metadata,
    Column("station_id", String(64), primary_key=True),
    Column("chain", String(64), primary_key=True),  # hash of the chain's seq-1 record
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Double, nullable=False),  # the station's Unix time; hashed as repr(float), so exact
    Column("event", String(64), nullable=False),
    Column("report_id", String(64), nullable=True),
    Column("actor", String(128), nullable=False),
    Column("details", Text, nullable=False),  # JSON text exactly as the station hashed it
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("received_at", TS, nullable=False),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("pending_totp", Boolean, nullable=False, default=False),
    Column("created_at", TS, nullable=False),
    Column("last_seen_at", TS, nullable=False),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(300), primary_key=True),  # "u:<username>" or "ip:<address>"
    Column("count", Integer, nullable=False),
    Column("window_start", TS, nullable=False),
)

# Tables copied by backup/restore, parents first.
BACKUP_TABLES = [
    keks,
    users,
    groups,
    user_groups,
    grants,
    stations,
    api_tokens,
    enrollment_codes,
    reports,
    report_recipients,
    inbox_files,
    audit_log,
    audit_head,
    station_audit,
]
