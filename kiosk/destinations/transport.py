"""Small helpers shared by network destinations: secret files and TLS contexts.

Secrets live in their own files (never in kiosk.toml, which is often edited on a PC and copied around),
one line each, not readable by everyone. A missing or unsafe secret file is a configuration error, so it
raises a permanent DeliveryError that names the file but never its contents.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from kiosk.destinations.base import DeliveryError

LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


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


def is_certificate_error(exc: BaseException) -> bool:
    """An untrusted or mismatched server certificate: someone must fix ca_file or the server."""
    return isinstance(exc, ssl.SSLCertVerificationError)
