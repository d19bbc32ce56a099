"""`kiosk doctor`'s checks of the delivery destinations (by type) and of the optional FHIR patient lookup:
each connects the way the station will, with its own settings, and sends no patient data."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kiosk.checks import FAIL, PASS, SKIP, WARN, CheckResult
from kiosk.patient_lookup import LookupFailed, PatientLookupConfig, capabilities

if TYPE_CHECKING:
    from kiosk.doctor import KeyServerProbe


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
