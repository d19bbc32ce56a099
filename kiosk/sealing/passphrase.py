"""Static-key passphrases for RNCryptor password mode.

RNCryptor v3 fixes PBKDF2 at 10,000 rounds, which adds only about 13 bits of work, so the passphrase
itself must carry the strength: we require an estimated 100 bits (zxcvbn) and generate 256-bit ones.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
from pathlib import Path

from zxcvbn import zxcvbn

MIN_BITS = 100
# zxcvbn's matching is quadratic in length; beyond this a random passphrase is strong anyway.
_ZXCVBN_MAX_LENGTH = 100


class WeakPassphrase(ValueError):
    pass


def estimated_bits(passphrase: str) -> float:
    if len(passphrase) > _ZXCVBN_MAX_LENGTH:
        head = estimated_bits(passphrase[:_ZXCVBN_MAX_LENGTH])
        return head + math.log2(len(set(passphrase))) * (len(passphrase) - _ZXCVBN_MAX_LENGTH) / 4
    return float(zxcvbn(passphrase)["guesses_log10"]) * math.log2(10)


def check(passphrase: str, *, source: str = "the passphrase") -> None:
    bits = estimated_bits(passphrase)
    if bits < MIN_BITS:
        raise WeakPassphrase(
            f"{source} is too weak ({bits:.0f} bits estimated, {MIN_BITS} needed); "
            "create one with `kiosk passphrase new FILE`"
        )


def generate() -> str:
    return secrets.token_urlsafe(32)


def read_file(path: Path, *, check_strength: bool = True) -> str:
    """Read a passphrase file: one line, not world-readable, and (for sealing) strong enough."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WeakPassphrase(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise WeakPassphrase(f"passphrase file {path} is not UTF-8 text") from exc
    if mode & stat.S_IROTH:
        raise WeakPassphrase(f"passphrase file {path} is readable by everyone; run: chmod o-r {path}")
    passphrase = text.rstrip("\r\n")
    if not passphrase or "\n" in passphrase:
        raise WeakPassphrase(f"passphrase file {path} must hold exactly one line")
    if check_strength:
        check(passphrase, source=f"the passphrase in {path}")
    return passphrase


def write_new_file(path: Path) -> None:
    """Create ``path`` (0600, must not exist) with a fresh 256-bit passphrase."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(generate() + "\n")
