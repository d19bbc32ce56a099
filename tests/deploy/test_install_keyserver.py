"""deploy/keyserver/install.sh in --root mode, and the Caddyfiles."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tomllib

import pytest

from keyserver.config import load_config

from .conftest import KS_INSTALL, REPO, DryRun, dry_run


def test_service_is_gunicorn_with_the_master_secret_as_a_credential(ks_root: DryRun) -> None:
    service = ks_root.text("/etc/systemd/system/keyserver.service")
    assert "LoadCredential=keyserver-master:/etc/keyserver/master.key" in service
    assert "ExecStartPre=/opt/keyserver/venv/bin/keyserver db upgrade" in service
    assert "ExecStart=/opt/keyserver/venv/bin/gunicorn --bind ${KEYSERVER_BIND}" in service
    assert "Environment=KEYSERVER_BIND=127.0.0.1:8700" in service and "Type=notify" in service
    for option in (
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=",
    ):
        assert f"\n{option}\n" in service


def test_timers(ks_root: DryRun) -> None:
    jobs = {
        "keyserver-rotate": "keyserver kek rotate --if-due",
        "keyserver-purge": "keyserver inbox purge",
        "keyserver-audit-verify": "keyserver audit verify",
        "keyserver-backup": "/opt/keyserver/bin/keyserver-backup",
    }
    for name, command in jobs.items():
        assert command in ks_root.text(f"/etc/systemd/system/{name}.service")
        timer = ks_root.text(f"/etc/systemd/system/{name}.timer")
        assert "OnCalendar=" in timer and "Persistent=true" in timer and "WantedBy=timers.target" in timer
    backup = ks_root.text("/etc/systemd/system/keyserver-backup.service")
    assert "LoadCredential=keyserver-backup-passphrase:/etc/keyserver/backup.passphrase" in backup
    assert "LoadCredential=keyserver-master:" in ks_root.text("/etc/systemd/system/keyserver-rotate.service")


def test_config_and_secrets(ks_root: DryRun, tmp_path) -> None:
    path = ks_root.path("/etc/keyserver/keyserver.toml")
    config = load_config(path)
    assert config.database_url.startswith("postgresql+psycopg://keyserver@/keyserver")
    assert config.public_base_url == "https://keys.clinic.test"
    assert config.allow_generated_master_secret is False and config.session_cookie_secure is True
    assert tomllib.loads(path.read_text())["trusted_proxy_hops"] == 1
    for secret in ("master.key", "backup.passphrase"):
        file = ks_root.path(f"/etc/keyserver/{secret}")
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert len(bytes.fromhex(file.read_text())) == 32
    assert stat.S_IMODE(ks_root.path("/var/backups/keyserver").stat().st_mode) == 0o700
    # A second run keeps the secrets (losing the master secret loses every KEK).
    root = tmp_path / "again"
    first = dry_run(KS_INSTALL, root, "--hostname", "a.test")
    key = first.text("/etc/keyserver/master.key")
    second = dry_run(KS_INSTALL, root, "--hostname", "b.test")
    assert (
        second.text("/etc/keyserver/master.key") == key
        and "keeping /etc/keyserver/master.key" in second.output
    )
    assert "https://a.test" in second.text("/etc/keyserver/keyserver.toml")


def test_caddyfile_variants(ks_root: DryRun, tmp_path) -> None:
    acme = ks_root.text("/etc/caddy/Caddyfile")
    assert "keys.clinic.test {" in acme and "reverse_proxy 127.0.0.1:8700" in acme and "tls " not in acme
    own = dry_run(KS_INSTALL, tmp_path / "own", "--hostname", "k.test", "--tls", "own")
    assert "tls /etc/caddy/tls/keys.pem /etc/caddy/tls/key.pem" in own.text("/etc/caddy/Caddyfile")
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy (Debian package) not installed: Caddyfile syntax not checked")
    for path in (REPO / "deploy/keyserver/Caddyfile", REPO / "deploy/keyserver/Caddyfile.hospital-cert"):
        done = subprocess.run(
            [caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"], capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()


def test_postgres_role_and_database(ks_root: DryRun) -> None:
    commands = ks_root.commands()
    assert "runuser -u postgres -- createuser keyserver" in commands
    assert "runuser -u postgres -- createdb --owner=keyserver keyserver" in commands
    assert "systemctl enable --now keyserver.service" in commands
    assert "/usr/local/bin/keyserver kek rotate --if-due" in commands
