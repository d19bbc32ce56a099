"""`kiosk doctor`'s checks of the station's own machine: where plaintext may live (tmpfs work dir, no
swap, no core dumps, the journal in RAM), the data dir, free space, the outbox and the audit shipping."""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import time
from pathlib import Path

from kiosk.checks import FAIL, PASS, SKIP, WARN, CheckResult, free_space
from kiosk.config import Config

PROC_MOUNTS = Path("/proc/mounts")
PROC_SWAPS = Path("/proc/swaps")
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
JOURNALD_CONF = Path("/etc/systemd/journald.conf")
PERSISTENT_JOURNAL = Path("/var/log/journal")
TMPFS_TYPES = {"tmpfs", "ramfs"}
# The worker ships audit records within seconds; an hour behind means the key server has been away.
AUDIT_BACKLOG_WARN_SECONDS = 3600.0
AUDIT_BACKLOG_FAIL_SECONDS = 24 * 3600.0
AUDIT_BACKLOG_FAIL_RECORDS = 100


# --- the station's own machine ---------------------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_of(path: Path, mounts_text: str | None = None) -> tuple[str, str, set[str]] | None:
    """(mount point, fs type, options) of the filesystem holding `path`, from /proc/mounts."""
    text = PROC_MOUNTS.read_text() if mounts_text is None else mounts_text
    target = os.path.realpath(path)
    best: tuple[str, str, set[str]] | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = _unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # later mounts hide earlier ones
            best = (point, fields[2], set(fields[3].split(",")))
    return best


def active_swaps(swaps_text: str | None = None) -> list[str]:
    text = PROC_SWAPS.read_text() if swaps_text is None else swaps_text
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


def check_swap() -> CheckResult:
    swaps = active_swaps()
    if swaps:
        return CheckResult(
            "swap",
            FAIL,
            f"swap is on ({', '.join(swaps)}): RAM holding photos can be written to disk",
            "rerun deploy/pi/install.sh (disables dphys-swapfile and zram), or `swapoff -a`",
        )
    return CheckResult("swap", PASS, "no swap (/proc/swaps is empty)")


def check_work_dir(config: Config) -> CheckResult:
    work_dir = config.station.work_dir
    if work_dir is None:
        return CheckResult("tmpfs", PASS, "work_dir unset: transient data stays in process memory")
    if not work_dir.is_dir():
        return CheckResult(
            "tmpfs", FAIL, f"work_dir {work_dir} does not exist", "systemctl start run-kiosk.mount"
        )
    found = mount_of(work_dir)
    if found is None or found[1] not in TMPFS_TYPES:
        kind = found[1] if found else "unknown"
        return CheckResult(
            "tmpfs",
            FAIL,
            f"work_dir {work_dir} is on {kind}, not tmpfs: plaintext could reach the SD card",
            "systemctl enable --now run-kiosk.mount (deploy/pi/install.sh installs it)",
        )
    point, kind, options = found
    if "noswap" not in options and active_swaps():
        return CheckResult("tmpfs", WARN, f"{point} is {kind} without noswap and swap is on", "swapoff -a")
    extra = ", noswap" if "noswap" in options else ""
    return CheckResult("tmpfs", PASS, f"work_dir {work_dir} is on {kind} ({point}{extra})")


def check_core_dumps() -> CheckResult:
    try:
        pattern = CORE_PATTERN.read_text().strip()
    except OSError:
        pattern = ""
    hard_limit = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if pattern.startswith("|/bin/false") or hard_limit == 0:
        return CheckResult(
            "core dumps", PASS, f"disabled (core_pattern {pattern!r}, hard limit {hard_limit})"
        )
    return CheckResult(
        "core dumps",
        WARN,
        f"a crash could write process memory to disk (core_pattern {pattern!r})",
        "rerun deploy/pi/install.sh (sysctl kernel.core_pattern=|/bin/false, coredump Storage=none)",
    )


def journald_storage(conf: Path = JOURNALD_CONF) -> str | None:
    """The effective journald Storage= setting from journald.conf and its drop-ins (last one wins)."""
    files = [conf]
    for directory in (Path("/usr/lib/systemd/journald.conf.d"), Path("/etc/systemd/journald.conf.d")):
        if directory.is_dir():
            files += sorted(directory.glob("*.conf"), key=lambda p: p.name)
    value = None
    for file in files:
        with contextlib.suppress(OSError):
            for line in file.read_text().splitlines():
                key, _, rest = line.strip().partition("=")
                if key.strip() == "Storage":
                    value = rest.strip()
    return value


def check_journal() -> CheckResult:
    storage = journald_storage()
    if storage in ("volatile", "none"):
        return CheckResult("journal", PASS, f"journald Storage={storage}: logs stay in RAM")
    if storage in (None, "auto") and not PERSISTENT_JOURNAL.is_dir():
        return CheckResult("journal", PASS, "no persistent journal (/var/log/journal absent)")
    return CheckResult(
        "journal",
        WARN,
        f"journald keeps logs on disk (Storage={storage or 'auto'}); logs carry no patient data, but the "
        "station image keeps them in RAM",
        "rerun deploy/pi/install.sh (journald Storage=volatile)",
    )


def check_data_dir(config: Config) -> CheckResult:
    path = config.station.data_dir
    if not path.is_dir():
        return CheckResult("data dir", FAIL, f"{path} does not exist", f"install -d -m 0700 -o kiosk {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        return CheckResult("data dir", FAIL, f"{path} is not writable by this user", f"chown kiosk {path}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return CheckResult("data dir", WARN, f"{path} has mode {mode:04o}", f"chmod 700 {path}")
    return CheckResult("data dir", PASS, f"{path} (mode {mode:04o})")


def check_disk(config: Config) -> CheckResult:
    fix = "free space on the SD card (apt clean; journalctl --vacuum-size=16M); check the outbox"
    return free_space("free disk", config.station.data_dir, fix)


def check_outbox(config: Config) -> CheckResult:
    from kiosk.outbox.store import Outbox
    from kiosk.outbox.worker import status

    if not config.station.data_dir.is_dir():
        return CheckResult("outbox", SKIP, "no data dir")
    outbox = Outbox(config.station.data_dir)
    try:
        current = status(outbox)
    finally:
        outbox.close()
    waiting = current.pending + current.failed
    detail = f"{current.pending} pending, {current.failed} failed"
    if waiting:
        detail += f", oldest {current.oldest_age_seconds / 60:.0f} min"
    if current.stuck:
        return CheckResult(
            "outbox", FAIL, detail, "`kiosk outbox list`, fix the destination, then `kiosk outbox retry`"
        )
    return CheckResult("outbox", PASS, detail if waiting else "empty")


def check_audit_shipping(config: Config, now: float | None = None) -> CheckResult:
    from kiosk.audit_shipping import backlog

    name = "audit shipping"
    if not config.credentials_file.exists():
        return CheckResult(name, SKIP, "not enrolled: the audit trail stays on the station")
    behind = backlog(config.station.data_dir)
    if not behind.unshipped or behind.oldest_at is None:
        return CheckResult(name, PASS, f"the key server holds the audit trail up to seq {behind.shipped_seq}")
    age = (time.time() if now is None else now) - behind.oldest_at
    plural = "s" if behind.unshipped != 1 else ""
    detail = f"{behind.unshipped} audit record{plural} not shipped, oldest {age / 3600:.1f} h"
    fix = "`kiosk outbox ship-audit` shows why (key server unreachable, station disabled, chain conflict)"
    if age <= AUDIT_BACKLOG_WARN_SECONDS:
        return CheckResult(name, PASS, detail)
    if age > AUDIT_BACKLOG_FAIL_SECONDS and behind.unshipped >= AUDIT_BACKLOG_FAIL_RECORDS:
        return CheckResult(name, FAIL, detail, fix)
    return CheckResult(name, WARN, detail, fix)
