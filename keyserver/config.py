"""Key server configuration: one TOML file, every key optional, zero-config defaults for the demo.

Looked up as ``keyserver --config FILE``, else ``$KEYSERVER_CONFIG``, else built-in defaults. Relative paths
in the file are relative to the file's directory, so a config and its data can move together.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "clinical-photo-keyserver"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    data_dir: Path = DEFAULT_DATA_DIR
    # Empty means SQLite in data_dir (the embedded default); production uses postgresql+psycopg://...
    database_url: str = ""
    # Master secret sources, tried in this order: systemd credential, file, environment variable, and only
    # if none is configured, an auto-created file in data_dir (demo). Never the database.
    master_secret_file: Path | None = None
    master_secret_env: str = "KEYSERVER_MASTER_SECRET"  # noqa: S105 (a variable name)
    allow_generated_master_secret: bool = True
    public_base_url: str = "http://127.0.0.1:8470"
    inbox_dir: Path | None = None
    inbox_retention_days: int = 30
    max_upload_mb: int = 64
    session_cookie_secure: bool = False
    session_idle_minutes: int = 30
    session_max_hours: int = 10
    login_max_failures: int = 5
    login_lockout_minutes: int = 15
    enrollment_code_minutes: int = 15
    # Failed station enrollments (codes have 80 bits: defence in depth), counted in the database so that
    # every instance applies them: per client address, from all addresses, and their window.
    enroll_max_failures_per_address: int = 10
    enroll_max_failures_total: int = 100
    enroll_window_minutes: int = 15
    kek_rotation_days: int = 30
    # A retired KEK may be destroyed only after this many days (reports sealed under it become unreadable).
    kek_retention_days: int = 3650
    # FULL: every commit (every audit record) is on disk before the key is returned.
    sqlite_synchronous: str = "FULL"
    # Behind a TLS proxy: how many X-Forwarded-* hops to trust (client address in the audit, https scheme).
    trusted_proxy_hops: int = 0
    web_dir: Path = WEB_DIR

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'keyserver.sqlite3'}"

    @property
    def effective_inbox_dir(self) -> Path:
        return self.inbox_dir or self.data_dir / "inbox"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")


_PATH_KEYS = {"data_dir", "master_secret_file", "inbox_dir", "web_dir"}


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Read the TOML file (if any), apply keyword overrides, validate."""
    path = path or os.environ.get("KEYSERVER_CONFIG") or None
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path:
        file = Path(path)
        try:
            values = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {file}: {exc}") from exc
        base = file.resolve().parent
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(Config)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    for key in _PATH_KEYS & set(values):
        p = Path(values[key]).expanduser()
        values[key] = p if p.is_absolute() else base / p
    config = Config(**values)
    if config.inbox_retention_days < 1 or config.max_upload_mb < 1 or config.kek_rotation_days < 1:
        raise ConfigError("retention, upload limit and rotation period must be positive")
    limits = (
        config.login_max_failures,
        config.login_lockout_minutes,
        config.enroll_max_failures_per_address,
        config.enroll_max_failures_total,
        config.enroll_window_minutes,
    )
    if min(limits) < 1:
        raise ConfigError("login and enrollment limits and their windows must be positive")
    if config.sqlite_synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
        raise ConfigError("sqlite_synchronous must be FULL, EXTRA or NORMAL")
    return config
