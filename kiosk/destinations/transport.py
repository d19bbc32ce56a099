"""Small helpers shared by network destinations: secret files, TLS contexts and plaintext base URLs.

Secrets live in their own files (never in kiosk.toml, which is often edited on a PC and copied around),
one line each, not readable by everyone. A missing or unsafe secret file is a configuration error, so it
raises a permanent DeliveryError that names the file but never its contents.
"""

from __future__ import annotations

import socket
import ssl
import stat
from pathlib import Path
from urllib.parse import urlsplit

from kiosk.destinations.base import DeliveryError

LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def https_base_url(value: str, name: str) -> str:
    """A base URL that plaintext (photos, identifiers, names) is sent to: https, or http to loopback only
    (test servers); no query, fragment or credentials in it. Returned without a trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        raise ValueError(f"{name} must use https (http is allowed only for 127.0.0.1/localhost)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{name} must not carry a query, fragment or credentials (use auth)")
    return value.rstrip("/")


def read_secret_file(path: Path, what: str) -> str:
    """The one-line secret in ``path`` (a password or token); ``what`` names it in error messages."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeliveryError(f"cannot read the {what} file {path}: {exc.strerror}", permanent=True) from exc
    except UnicodeDecodeError as exc:
        raise DeliveryError(f"the {what} file {path} is not UTF-8 text", permanent=True) from exc
    if mode & stat.S_IROTH:
        raise DeliveryError(
            f"the {what} file {path} is readable by everyone; run: chmod o-r {path}", permanent=True
        )
    secret = text.rstrip("\r\n")
    if not secret or "\n" in secret or "\r" in secret:
        raise DeliveryError(f"the {what} file {path} must hold exactly one line", permanent=True)
    return secret


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification is always on; ``ca_file`` replaces the system CAs for a private CA."""
    if ca_file is not None and not ca_file.is_file():
        raise DeliveryError(f"the CA file {ca_file} does not exist", permanent=True)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (ssl.SSLError, OSError) as exc:
        raise DeliveryError(f"the CA file {ca_file} is not a PEM certificate", permanent=True) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def network_error(where: str, exc: OSError, *, timeout: float, hint: str) -> DeliveryError:
    """The DeliveryError for a failure below the protocol. An untrusted or mismatched certificate needs a
    person (ca_file or the server's certificate: ``hint`` says which setting); timeouts, unknown hosts and
    refused or broken connections are retried."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DeliveryError(
            f"{where}: the server's TLS certificate is not trusted ({exc.verify_message}); {hint}",
            permanent=True,
        )
    if isinstance(exc, ssl.SSLError):
        return DeliveryError(f"{where}: TLS failed ({exc.reason or type(exc).__name__})")
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"{where}: no answer within {timeout:g} s")
    if isinstance(exc, socket.gaierror):
        return DeliveryError(f"{where}: host name not found (is the network up?)")
    return DeliveryError(f"{where}: {exc.strerror or type(exc).__name__}")
