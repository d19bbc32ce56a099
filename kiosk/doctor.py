"""`kiosk doctor`: is this station ready to take, seal and deliver photos? One line per check, with a fix.

    kiosk doctor            # human-readable; exit 1 if any check fails
    kiosk doctor --json     # [{"name", "status", "detail", "fix"}, ...] for monitoring

`run_checks(config)` is the same list for the app's /healthz (pass ``hardware=False`` there: the running app
owns the camera and the GPIO pins, and reports on them itself). Status is one of pass, warn, fail, skip.
Nothing here reads or prints patient data: the checks look at configuration, devices, the network, the
kernel and the outbox's counters.
"""

from __future__ import annotations

import contextlib
import ctypes
import email.utils
import json
import os
import resource
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from kiosk import config as config_module
from kiosk import keyring
from kiosk.checks import FAIL, PASS, SKIP, WARN, CheckResult, format_text, free_space, overall
from kiosk.config import Config
from kiosk.patient_lookup import LookupFailed, PatientLookupConfig, capabilities

SKEW_WARN_SECONDS = 30.0
SKEW_FAIL_SECONDS = 300.0
TIME_ERROR = 5  # adjtimex(2): the kernel clock is not synchronised
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


# --- the key server: one probe shared by several checks -----------------------------------------------


@dataclass
class KeyServerProbe:
    url: str
    reachable: bool = False
    error: str = ""
    skew_seconds: float | None = None
    newest_version: int | None = None
    keys_error: str = ""


def _get(url: str, timeout: float) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (http/https only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.headers, response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read(10_000)


def probe_keyserver(url: str, timeout: float) -> KeyServerProbe:
    probe = KeyServerProbe(url.rstrip("/"))
    if not probe.url.startswith(("http://", "https://")):
        probe.error = "the URL must start with https:// (or http:// for a local test server)"
        return probe
    try:
        sent = time.time()
        status, headers, _ = _get(f"{probe.url}/healthz", timeout)
        received = time.time()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        probe.error = f"cannot reach {probe.url}: {reason}"
        return probe
    if status != 200:
        probe.error = f"{probe.url}/healthz answered HTTP {status}"
        return probe
    probe.reachable = True
    date = headers.get("Date") if headers is not None else None
    if date:
        with contextlib.suppress(TypeError, ValueError):
            server = email.utils.parsedate_to_datetime(date).timestamp()
            # The server's clock read the time somewhere between our send and receive; Date has 1 s steps.
            probe.skew_seconds = (sent + received) / 2 - server - 0.5
    try:
        status, _, body = _get(f"{probe.url}/v1/keys", timeout)
        if status != 200:
            probe.keys_error = f"/v1/keys answered HTTP {status}"
        else:
            keys = json.loads(body)["keys"]
            probe.newest_version = max(int(k["version"]) for k in keys) if keys else None
            if probe.newest_version is None:
                probe.keys_error = "the key server has no key yet (`keyserver kek rotate`)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        probe.keys_error = f"cannot read /v1/keys: {exc}"
    return probe


def check_keyserver(probe: KeyServerProbe) -> CheckResult:
    if probe.reachable:
        return CheckResult("key server", PASS, f"{probe.url} answers")
    return CheckResult(
        "key server",
        FAIL,
        probe.error,
        "check the network, [keyserver] url in kiosk.toml and that the key server runs "
        "(`systemctl status keyserver` on its host)",
    )


def check_clock_skew(probe: KeyServerProbe) -> CheckResult:
    name = "clock skew"
    if not probe.reachable:
        return CheckResult(name, SKIP, "key server not reachable")
    if probe.skew_seconds is None:
        return CheckResult(name, WARN, "the key server sent no Date header", "check the reverse proxy")
    skew = probe.skew_seconds
    detail = f"local clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the key server"
    fix = "enable time sync: `timedatectl set-ntp true`; set NTP= to the hospital's time servers"
    if abs(skew) > SKEW_FAIL_SECONDS:
        return CheckResult(name, FAIL, detail + " (TLS and audit times need < 5 min)", fix)
    if abs(skew) > SKEW_WARN_SECONDS:
        return CheckResult(name, WARN, detail, fix)
    return CheckResult(name, PASS, detail)


def kernel_clock_synchronised() -> bool | None:
    """What `timedatectl` calls "System clock synchronized", read straight from adjtimex(2)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 only reads
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


def check_clock_sync(synchronised: bool | None = None) -> CheckResult:
    synchronised = kernel_clock_synchronised() if synchronised is None else synchronised
    if synchronised is None:
        return CheckResult("clock sync", SKIP, "cannot read the kernel clock state")
    if synchronised:
        return CheckResult("clock sync", PASS, "the system clock is synchronised (NTP)")
    return CheckResult(
        "clock sync",
        WARN,
        "the system clock is not synchronised",
        "`timedatectl set-ntp true`; if the network blocks public NTP, set NTP= in "
        "/etc/systemd/timesyncd.conf.d/50-kiosk.conf to the hospital's time servers",
    )


def check_enrollment(config: Config, probe: KeyServerProbe | None) -> CheckResult:
    name = "enrollment"
    enroll_fix = "enroll on the admin screen, or `kiosk enroll --key-server URL --code CODE`"
    creds = config.credentials_file
    if not creds.exists():
        return CheckResult(name, FAIL, f"no station credential ({creds})", enroll_fix)
    try:
        document = json.loads(creds.read_text(encoding="utf-8"))
        if not document.get("token"):
            raise ValueError("no token")
    except (OSError, ValueError) as exc:
        return CheckResult(name, FAIL, f"{creds} is damaged: {exc}", enroll_fix)
    try:
        current = keyring.current(config.public_keys_file)
    except keyring.KeyringError as exc:
        return CheckResult(name, FAIL, str(exc), enroll_fix)
    if stat.S_IMODE(creds.stat().st_mode) & 0o077:
        return CheckResult(name, WARN, f"{creds} is readable by others", f"chmod 600 {creds}")
    detail = f"station {document.get('station_id', '?')}, sealing to key version {current.version}"
    if probe is None or not probe.reachable or probe.newest_version is None:
        reason = (probe.error or probe.keys_error) if probe else "no [keyserver] section"
        return CheckResult(name, WARN, f"{detail}; cannot compare with the server ({reason})")
    if probe.newest_version != current.version:
        return CheckResult(
            name,
            WARN,
            f"{detail}, but the key server's newest is version {probe.newest_version}",
            "`kiosk refresh-keys` (the station also refreshes by itself)",
        )
    return CheckResult(name, PASS, detail + " (the server's newest)")


# --- destinations, generic checks by type ----------------------------------------------------------------


def _connect(host: str, port: int, timeout: float, tls: ssl.SSLContext | None) -> str:
    """TCP (and TLS) connect; returns a short description; raises OSError/ssl.SSLError."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if tls is None:
            return f"{host}:{port} accepts connections"
        with tls.wrap_socket(sock, server_hostname=host) as wrapped:
            return f"{host}:{port} TLS ok ({wrapped.version()})"


def _connect_result(
    name: str, host: str, port: int, timeout: float, tls: ssl.SSLContext | None
) -> CheckResult:
    try:
        return CheckResult(name, PASS, _connect(host, port, timeout, tls))
    except ssl.SSLCertVerificationError as exc:
        return CheckResult(
            name,
            FAIL,
            f"{host}:{port}: certificate not trusted ({exc.verify_message})",
            "set ca_file to the hospital CA bundle",
        )
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return CheckResult(
            name, FAIL, f"cannot connect to {host}:{port}: {reason}", "check host, port, firewall"
        )


def _check_folder(name: str, dest: Any, timeout: float) -> CheckResult:
    path = Path(dest.path)
    if not path.is_dir():
        return CheckResult(name, FAIL, f"{path} is not a directory", f"mount the share or create {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        return CheckResult(name, FAIL, f"{path} is not writable by this user", f"chown kiosk {path}")
    return CheckResult(name, PASS, f"{path} is a writable directory")


def _check_email(name: str, dest: Any, timeout: float) -> CheckResult:
    from kiosk.destinations.transport import tls_context

    port = dest.effective_port
    tls = tls_context(dest.ca_file) if dest.security == "tls" else None
    result = _connect_result(name, dest.host, port, timeout, tls)
    if result.status == PASS and dest.security == "starttls":
        result = CheckResult(name, PASS, f"{dest.host}:{port} accepts connections (STARTTLS at send time)")
    return result


def _check_https(name: str, dest: Any, timeout: float) -> CheckResult:
    from kiosk.destinations.transport import tls_context

    parts = urlsplit(dest.url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    return _connect_result(
        name, parts.hostname or "", port, timeout, tls_context(dest.ca_file) if secure else None
    )


def _check_http_endpoint(path: str, service: str) -> Callable[[str, Any, float], CheckResult]:
    def check(name: str, dest: Any, timeout: float) -> CheckResult:
        from kiosk.destinations.base import DeliveryError
        from kiosk.destinations.medical_common import request

        quick = dest.model_copy(update={"timeout": min(timeout, dest.timeout)})
        url = dest.base_url.rstrip("/") + path
        try:
            reply = request(quick, "GET", url, headers={"Accept": "application/json"}, service=service)
        except DeliveryError as exc:
            return CheckResult(name, FAIL, str(exc), "check base_url, network and ca_file")
        if reply.status in (401, 403):
            return CheckResult(name, FAIL, f"{url}: HTTP {reply.status}", "check the [auth] credentials")
        if reply.status >= 500 or (path and reply.status != 200):
            return CheckResult(name, WARN, f"{url}: HTTP {reply.status}", f"ask the {service} administrator")
        return CheckResult(name, PASS, f"{url}: HTTP {reply.status}")

    return check


def _check_rclone(name: str, dest: Any, timeout: float) -> CheckResult:
    binary = shutil.which(dest.rclone_binary)
    if binary is None:
        return CheckResult(name, FAIL, f"{dest.rclone_binary} is not installed", "apt install rclone")
    if not Path(dest.rclone_config).is_file():
        return CheckResult(
            name, FAIL, f"{dest.rclone_config} is missing", f"rclone config --config {dest.rclone_config}"
        )
    command = [
        binary,
        "--config",
        str(dest.rclone_config),
        "lsd",
        dest.remote,
        "--contimeout",
        f"{timeout:g}s",
    ]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout * 3, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(name, FAIL, f"`rclone lsd {dest.remote}` did not finish", "check the network")
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return CheckResult(
            name,
            FAIL,
            f"rclone lsd {dest.remote}: {lines[-1] if lines else 'failed'}",
            "`rclone config reconnect`",
        )
    return CheckResult(name, PASS, f"rclone lists {dest.remote}")


_DESTINATION_CHECKS: dict[str, Callable[[str, Any, float], CheckResult]] = {
    "folder": _check_folder,
    "email": _check_email,
    "https": _check_https,
    "rclone": _check_rclone,
    "fhir": _check_http_endpoint("/metadata", "FHIR server"),
    "dicomweb": _check_http_endpoint("", "DICOMweb server"),
}


def check_destination(dest: Any, timeout: float, probe: KeyServerProbe | None) -> CheckResult:
    name = f"destination {dest.name}"
    kind = getattr(dest, "type", "?")
    if kind == "keyserver-inbox":
        if probe is None:
            return CheckResult(name, FAIL, "no [keyserver] section", "add [keyserver] url to kiosk.toml")
        if not probe.reachable:
            return CheckResult(name, FAIL, probe.error, "see the key server check")
        return CheckResult(name, PASS, f"key server inbox at {probe.url} reachable")
    check = _DESTINATION_CHECKS.get(kind)
    if check is None:
        return CheckResult(name, SKIP, f"no check for type {kind!r}")
    return check(name, dest, timeout)


# --- the optional FHIR patient lookup --------------------------------------------------------------------

_LOOKUP_FIXES = {
    "credentials": "check [patient_lookup] auth (token or password) and that this account may read Patient",
    "setup": "fix [patient_lookup] auth or ca_file: secret files owned by kiosk, chmod 600; a PEM ca_file",
    "tls": "set [patient_lookup] ca_file to the CA that signs the FHIR server's certificate; check the URL",
    "network": "check the network, the firewall and [patient_lookup] fhir_base_url (host and port)",
    "server": "the FHIR server has a problem: ask its administrator (nurses can still type identifiers)",
    "answer": "check [patient_lookup] fhir_base_url: it must be the FHIR base, where /metadata answers",
}


def _short(value: object) -> str:
    """Text the server sent, as one short line."""
    return " ".join(str(value).split())[:60]


def check_patient_lookup(lookup: PatientLookupConfig | None, timeout: float) -> CheckResult:
    """`GET [base]/metadata` with the lookup's own auth, TLS and timeout; never a patient identifier."""
    name = "patient lookup"
    if lookup is None:
        return CheckResult(name, SKIP, "not configured ([patient_lookup] missing)")
    if not lookup.enabled:
        return CheckResult(name, SKIP, "turned off ([patient_lookup] enabled = false)")
    quick = lookup.model_copy(update={"timeout": min(timeout, lookup.timeout)})
    try:
        statement = capabilities(quick)
    except LookupFailed as exc:
        fix = _LOOKUP_FIXES.get(exc.reason, "check [patient_lookup] in kiosk.toml")
        return CheckResult(name, FAIL, exc.detail or exc.outcome, fix)
    version, software = statement.get("fhirVersion"), statement.get("software")
    about = [f"FHIR {_short(version)}"] if version else []
    if isinstance(software, dict) and software.get("name"):
        about.append(_short(f"{software['name']} {software.get('version') or ''}"))
    detail = f"{lookup.fhir_base_url}/metadata answers a CapabilityStatement"
    if about:
        detail += f" ({', '.join(about)})"
    return CheckResult(name, PASS, detail)


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


# --- hardware ---------------------------------------------------------------------------------------------


def _with_deadline(work: Callable[[], CheckResult], seconds: float, name: str, what: str) -> CheckResult:
    box: list[CheckResult] = []

    def run() -> None:
        try:
            box.append(work())
        except Exception as exc:
            box.append(CheckResult(name, FAIL, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if box:
        return box[0]
    return CheckResult(name, FAIL, f"no {what} within {seconds:g} s", "reseat the cable; reboot the station")


def check_camera(camera_config: Any, timeout: float = 10.0) -> CheckResult:
    from kiosk.hardware.camera import CameraUnavailable, open_camera

    def work() -> CheckResult:
        try:
            camera = open_camera(camera_config)
            with camera:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        frame = camera.frame_array()
                        if frame is not None and frame.size:
                            h, w = frame.shape[:2]
                            return CheckResult("camera", PASS, f"{camera.info.model}: {w}x{h} frame received")
                    except CameraUnavailable:
                        raise
                    except Exception:  # not started yet: keep polling until the deadline
                        if time.monotonic() > deadline:
                            raise
                    if time.monotonic() > deadline:
                        return CheckResult(
                            "camera", FAIL, "started, but no frame arrived", "reseat the ribbon"
                        )
                    time.sleep(0.05)
        except CameraUnavailable as exc:
            if "in use" in str(exc):
                return CheckResult(
                    "camera", WARN, str(exc), "the running station owns it: `kiosk doctor --no-hardware`"
                )
            return CheckResult("camera", FAIL, str(exc), "check the ribbon cable and [camera] in kiosk.toml")

    return _with_deadline(work, timeout + 5, "camera", "frame")


def check_gpio(gpio_config: Any) -> CheckResult:
    from kiosk.hardware.gpio import Gpio, GpioUnavailable

    pins = {k: getattr(gpio_config, k) for k in ("capture_pin", "second_pin", "led_pin", "buzzer_pin")}
    claimed = ", ".join(f"{k.removesuffix('_pin')} GPIO{v}" for k, v in pins.items() if v is not None)
    try:
        with Gpio(gpio_config):
            pass
    except GpioUnavailable as exc:
        text = str(exc)
        if "in use" in text.lower() or "busy" in text.lower():
            return CheckResult(
                "gpio", WARN, text, "the running station owns them: `kiosk doctor --no-hardware`"
            )
        return CheckResult("gpio", FAIL, text, "check [gpio] pins and that the user is in the gpio group")
    return CheckResult("gpio", PASS, f"claimed {claimed or 'no pins'}")


# --- all together -----------------------------------------------------------------------------------------


def run_checks(config: Config, *, hardware: bool = True, timeout: float = 5.0) -> list[CheckResult]:
    """Every check, in a fixed order. Network checks run in parallel, each bounded by `timeout`."""
    results = [
        CheckResult(
            "config",
            PASS,
            f"{config.source or 'configuration'}: valid; station {config.station.id}, "
            f"{len(config.destination)} destination(s)",
        )
    ]
    probe = probe_keyserver(config.keyserver.url, timeout) if config.keyserver else None

    def guarded(name: str, check: Callable[[], CheckResult]) -> Callable[[], CheckResult]:
        def run() -> CheckResult:
            try:
                return check()
            except Exception as exc:  # a broken check is a failure to report, not a crash of the doctor
                return CheckResult(name, FAIL, f"check crashed: {type(exc).__name__}: {exc}")

        return run

    checks: list[Callable[[], CheckResult]] = []
    camera_config = getattr(config, "camera", None)
    gpio_config = getattr(config, "gpio", None)
    if not hardware:
        checks.append(lambda: CheckResult("camera", SKIP, "not checked (owned by the running station)"))
        checks.append(lambda: CheckResult("gpio", SKIP, "not checked (owned by the running station)"))
    else:
        if camera_config is None:
            checks.append(lambda: CheckResult("camera", SKIP, "not configured ([camera] missing)"))
        else:
            checks.append(guarded("camera", lambda: check_camera(camera_config, timeout=max(timeout, 5.0))))
        if gpio_config is None or not getattr(gpio_config, "enabled", True):
            checks.append(lambda: CheckResult("gpio", SKIP, "not configured ([gpio] missing or disabled)"))
        else:
            checks.append(guarded("gpio", lambda: check_gpio(gpio_config)))
    if probe is None:
        checks.append(lambda: CheckResult("key server", SKIP, "no [keyserver] section"))
    else:
        checks += [lambda: check_keyserver(probe), lambda: check_clock_skew(probe)]
    checks.append(guarded("clock sync", check_clock_sync))
    if config.keyserver is not None:
        checks.append(guarded("enrollment", lambda: check_enrollment(config, probe)))
    for dest in config.destination:
        checks.append(
            guarded(f"destination {dest.name}", lambda d=dest: check_destination(d, timeout, probe))  # type: ignore[misc]
        )
    checks.append(guarded("patient lookup", lambda: check_patient_lookup(config.patient_lookup, timeout)))
    checks += [
        guarded("data dir", lambda: check_data_dir(config)),
        guarded("tmpfs", lambda: check_work_dir(config)),
        guarded("swap", check_swap),
        guarded("core dumps", check_core_dumps),
        guarded("journal", check_journal),
        guarded("free disk", lambda: check_disk(config)),
        guarded("outbox", lambda: check_outbox(config)),
        guarded("audit shipping", lambda: check_audit_shipping(config)),
    ]
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="doctor") as pool:
        results += list(pool.map(lambda check: check(), checks))
    return results


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, status, detail, fix}.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per network check.")
@click.option("--no-hardware", is_flag=True, help="Skip camera and GPIO (the running station owns them).")
@click.pass_context
def doctor_command(ctx: click.Context, as_json: bool, timeout: float, no_hardware: bool) -> None:
    """Check that this station can take, seal and deliver photos; exit 1 if anything fails."""
    config_path = (ctx.obj or {}).get("config_path")
    try:
        config = config_module.load(config_path)
    except config_module.ConfigError as exc:
        results = [
            CheckResult(
                "config",
                FAIL,
                str(exc),
                "edit kiosk.toml (/boot/firmware/kiosk.toml on the station), then `kiosk check-config`",
            )
        ]
    else:
        results = run_checks(config, hardware=not no_hardware, timeout=timeout)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        click.echo(format_text(results))
    ctx.exit(1 if overall(results) == FAIL else 0)
