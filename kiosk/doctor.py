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
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import click

from kiosk import config as config_module
from kiosk import keyring
from kiosk.checks import FAIL, PASS, SKIP, WARN, CheckResult, format_text, overall
from kiosk.config import Config
from kiosk.doctor_destinations import check_destination, check_patient_lookup
from kiosk.doctor_host import (
    check_audit_shipping,
    check_core_dumps,
    check_data_dir,
    check_disk,
    check_journal,
    check_outbox,
    check_swap,
    check_work_dir,
)

SKEW_WARN_SECONDS = 30.0
SKEW_FAIL_SECONDS = 300.0
TIME_ERROR = 5  # adjtimex(2): the kernel clock is not synchronised


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
