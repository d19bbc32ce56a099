"""deploy/pi/install.sh in --root mode: every file the station gets, with the settings that matter."""

from __future__ import annotations

import configparser
import json
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from kiosk import config as kiosk_config

from .conftest import PI_INSTALL, DryRun, dry_run


def unit(run: DryRun, name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(run.text(f"/etc/systemd/system/{name}"))
    return parser


def values(run: DryRun, name: str, section: str, key: str) -> list[str]:
    """Every assignment of a (repeatable) key, e.g. DeviceAllow."""
    current, found = None, []
    for line in run.text(f"/etc/systemd/system/{name}").splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.split("=", 1)[0] == key:
            found.append(line.split("=", 1)[1])
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_station_service_runs_the_app_sandboxed_with_watchdog(pi_root: DryRun) -> None:
    service = unit(pi_root, "kiosk.service")["Service"]
    assert service["ExecStart"] == "/opt/kiosk/venv/bin/kiosk serve --host 127.0.0.1 --port 8080"
    assert service["Type"] == "notify" and service["WatchdogSec"] == "30" and service["Restart"] == "always"
    assert service["User"] == "kiosk" and service["Environment"]  # configparser keeps the last Environment
    assert "KIOSK_CONFIG=/boot/firmware/kiosk.toml" in values(
        pi_root, "kiosk.service", "Service", "Environment"
    )
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/kiosk /run/kiosk",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallFilter": "@system-service",
        "MemoryDenyWriteExecute": "yes",
        "UMask": "0077",
        "LimitCORE": "0",
        "DevicePolicy": "closed",
    }
    assert {k: service.get(k) for k in expected} == expected
    devices = values(pi_root, "kiosk.service", "Service", "DeviceAllow")
    for group in ("char-video4linux", "char-media", "char-dma_heap", "char-gpiochip"):
        assert f"{group} rw" in devices
    assert unit(pi_root, "kiosk.service")["Unit"]["RequiresMountsFor"] == "/var/lib/kiosk /run/kiosk"


def test_run_kiosk_is_a_private_tmpfs_with_noswap_on_new_kernels(pi_root: DryRun, tmp_path: Path) -> None:
    mount = unit(pi_root, "run-kiosk.mount")["Mount"]
    assert mount["Where"] == "/run/kiosk" and mount["Type"] == "tmpfs"
    options = mount["Options"].split(",")
    assert "mode=0700" in options and "noswap" in options and "nodev" in options and "noexec" in options
    assert all(not o.startswith(("uid=@", "gid=@")) for o in options)
    old = dry_run(PI_INSTALL, tmp_path / "old", "--station-id", "s1", "--kernel", "6.1.21-v8+")
    assert "noswap" not in unit(old, "run-kiosk.mount")["Mount"]["Options"]
    assert "has no tmpfs noswap" in old.output


def test_config_template_is_valid_and_written_only_once(pi_root: DryRun, tmp_path: Path) -> None:
    path = pi_root.path("/boot/firmware/kiosk.toml")
    config = kiosk_config.parse(path.read_text(), path)
    assert config.station.id == "wound-clinic-1"  # sanitised from "wound clinic/1"
    assert str(config.station.work_dir) == "/run/kiosk" and str(config.station.data_dir) == "/var/lib/kiosk"
    # Idempotent: a second run keeps what the administrator edited, rewrites what the recipe owns.
    root = tmp_path / "again"
    first = dry_run(PI_INSTALL, root, "--station-id", "s1")
    first.path("/boot/firmware/kiosk.toml").write_text("# edited\n")
    first.path("/etc/kiosk/firewall-local.nft").write_text("# mine\n")
    first.path("/etc/systemd/system/kiosk.service").write_text("stale\n")
    second = dry_run(PI_INSTALL, root, "--station-id", "s2")
    assert second.text("/boot/firmware/kiosk.toml") == "# edited\n"
    assert second.text("/etc/kiosk/firewall-local.nft") == "# mine\n"
    assert "ExecStart=" in second.text("/etc/systemd/system/kiosk.service")


def test_permissions(pi_root: DryRun) -> None:
    assert mode(pi_root.path("/var/lib/kiosk")) == 0o700
    assert mode(pi_root.path("/etc/kiosk")) == 0o750
    assert mode(pi_root.path("/home/kiosk")) == 0o700
    assert mode(pi_root.path("/opt/kiosk/bin/kiosk-browser")) == 0o755
    assert mode(pi_root.path("/usr/local/bin/kiosk")) == 0o755
    for name in ("autostart", "environment", "rc.xml", "menu.xml"):
        assert mode(pi_root.path(f"/home/kiosk/.config/labwc/{name}")) == 0o644
    commands = pi_root.commands()
    assert "chown kiosk:kiosk /var/lib/kiosk" in commands
    assert "chown kiosk:kiosk /home/kiosk/.config/labwc" not in commands  # root-owned: not changeable


def test_display_starts_chromium_in_kiosk_mode(pi_root: DryRun) -> None:
    display = unit(pi_root, "kiosk-display.service")["Service"]
    assert display["ExecStart"] == "/usr/bin/labwc" and display["User"] == "kiosk"
    assert display["PAMName"] == "kiosk-display" and display["TTYPath"] == "/dev/tty7"
    assert pi_root.path("/etc/pam.d/kiosk-display").exists()
    autostart = pi_root.text("/home/kiosk/.config/labwc/autostart")
    assert "/opt/kiosk/bin/kiosk-browser" in autostart and "swayidle" not in autostart.split("#")[-1]
    browser = pi_root.text("/opt/kiosk/bin/kiosk-browser")
    for flag in (
        "--kiosk",
        "--noerrdialogs",
        "--disable-infobars",
        "--disable-session-crashed-bubble",
        "--incognito",
        "--disable-pinch",
        "--overscroll-history-navigation=0",
        "--check-for-update-interval=31536000",
        "--disable-features=Translate,TouchpadOverscrollHistoryNavigation",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--password-store=basic",
    ):
        assert f"\n  {flag}\n" in browser, flag
    assert 'curl --silent --fail --output /dev/null --max-time 2 "$url"' in browser
    assert "wlopm --on" in browser
    assert "XCURSOR_THEME=kiosk-invisible" in pi_root.text("/home/kiosk/.config/labwc/environment")
    policy = json.loads(pi_root.text("/etc/chromium/policies/managed/kiosk.json"))
    assert policy["URLBlocklist"] == ["*"] and policy["URLAllowlist"][0] == "http://127.0.0.1:8080"


def test_invisible_cursor_is_a_valid_transparent_xcursor(pi_root: DryRun) -> None:
    cursors = pi_root.path("/usr/share/icons/kiosk-invisible/cursors")
    data = (cursors / "default").read_bytes()
    magic, header, _version, ntoc = struct.unpack_from("<4sIII", data)
    assert (magic, header, ntoc) == (b"Xcur", 16, 1)
    kind, _size, position = struct.unpack_from("<III", data, 16)
    assert kind == 0xFFFD0002 and position == 28
    chunk = struct.unpack_from("<IIIIIIIII", data, position)
    assert chunk[0] == 36 and chunk[1] == kind and chunk[4:6] == (1, 1)  # a 1x1 image
    assert data[position + 36 :] == b"\0\0\0\0" and len(data) == 68  # one fully transparent pixel
    assert (cursors / "left_ptr").resolve() == (cursors / "default").resolve()


def test_nothing_plaintext_reaches_the_card(pi_root: DryRun) -> None:
    journald = pi_root.text("/etc/systemd/journald.conf.d/50-kiosk.conf")
    assert "Storage=volatile" in journald and "RuntimeMaxUse=" in journald
    coredump = pi_root.text("/etc/systemd/coredump.conf.d/50-kiosk.conf")
    assert "Storage=none" in coredump and "ProcessSizeMax=0" in coredump
    assert "kernel.core_pattern=|/bin/false" in pi_root.text("/etc/sysctl.d/90-kiosk.conf")
    assert "hard  core  0" in pi_root.text("/etc/security/limits.d/50-kiosk.conf")
    assert "DefaultLimitCORE=0" in pi_root.text("/etc/systemd/system.conf.d/50-kiosk.conf")
    assert "Mechanism=none" in pi_root.text("/etc/rpi/swap.conf.d/90-kiosk.conf")
    zram = pi_root.text("/etc/systemd/zram-generator.conf")
    assert not [line for line in zram.splitlines() if line.startswith("[")]  # no device: no zram swap
    commands = pi_root.commands()
    for expected in (
        "dphys-swapfile uninstall",
        "systemctl mask swap.target",
        "swapoff --all",
        "systemctl disable --now zramswap.service",
    ):
        assert expected in commands


def test_updates_and_time(pi_root: DryRun) -> None:
    assert 'Unattended-Upgrade "1"' in pi_root.text("/etc/apt/apt.conf.d/20auto-upgrades")
    origins = pi_root.text("/etc/apt/apt.conf.d/52kiosk-unattended-upgrades")
    assert "label=Debian-Security" in origins and "Raspberry Pi Foundation" in origins
    assert "[Time]" in pi_root.text("/etc/systemd/timesyncd.conf.d/50-kiosk.conf")
    assert "timedatectl set-ntp true" in pi_root.commands()


def test_dry_run_runs_nothing_but_prints_everything(pi_root: DryRun) -> None:
    commands = pi_root.commands()
    assert any(
        c.startswith("apt-get install") and "python3-picamera2" in c and "labwc" in c for c in commands
    )
    assert "libzbar0" not in pi_root.output  # barcodes are read by zxing-cpp, not pyzbar
    assert any(c.startswith("useradd --system") and c.endswith(" kiosk") for c in commands)
    assert "python3 -m venv --system-site-packages /opt/kiosk/venv" in commands
    assert any("pip install" in c and "\\[pi\\]" in c for c in commands)
    assert "systemctl enable --now run-kiosk.mount" in commands
    assert "systemctl enable kiosk.service kiosk-display.service" in commands


def test_firewall_ruleset_drops_inbound_and_parses(pi_root: DryRun, tmp_path: Path) -> None:
    ruleset = pi_root.text("/etc/nftables.conf")
    assert "hook input priority filter; policy drop;" in ruleset
    assert "ct state established,related accept" in ruleset
    assert "hook output priority filter; policy accept;" in ruleset
    assert "tcp dport 22" not in ruleset.replace("# ip", "")  # SSH only as a commented local example
    assert "# ip saddr 10.0.50.0/24 tcp dport 22 accept" in pi_root.text("/etc/kiosk/firewall-local.nft")
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft (Debian package nftables) not installed: syntax not checked")
    local = tmp_path / "firewall-local.nft"
    shutil.copy(pi_root.path("/etc/kiosk/firewall-local.nft"), local)
    main = tmp_path / "nftables.conf"
    main.write_text(ruleset.replace("/etc/kiosk/firewall-local.nft", str(local)))
    done = subprocess.run([nft, "--check", "--file", str(main)], capture_output=True, text=True)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("nft --check needs CAP_NET_ADMIN here")
    assert done.returncode == 0, done.stderr
