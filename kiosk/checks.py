"""Check results shared by `kiosk doctor` (the station) and `keyserver doctor` (the key server).

One result per check, with a fix for an administrator; an overall status for monitoring (fail if any check
failed, else warn if any warned); the text both CLIs print; and the free-space check both need.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
DISK_WARN_BYTES = 1_000_000_000
DISK_FAIL_BYTES = 200_000_000
_LABELS = {PASS: "[ ok ]", WARN: "[warn]", FAIL: "[FAIL]", SKIP: "[skip]"}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def overall(results: Iterable[CheckResult]) -> str:
    """fail if any check failed, else warn if any warned, else pass (skips do not count)."""
    statuses = {r.status for r in results}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS


def format_text(results: list[CheckResult]) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{_LABELS.get(r.status, r.status)} {r.name:<{width}}  {r.detail}")
        if r.fix and r.status in (WARN, FAIL):
            lines.append(f"       {'':<{width}}  fix: {r.fix}")
    lines.append(f"overall: {overall(results)}")
    return "\n".join(lines)


def free_space(name: str, path: Path, fix: str, *, show_path: bool = True) -> CheckResult:
    """Free space where `path` lives: warn under 1 GB, fail under 200 MB or if the path is missing.
    Without `show_path` the result does not name the path (for an answer to anonymous callers)."""
    shown = str(path) if show_path else "the directory"
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return CheckResult(name, FAIL, f"{shown}: {exc.strerror}", f"create {path}" if show_path else fix)
    detail = f"{free / 1e9:.2f} GB free in {shown}"
    if free < DISK_FAIL_BYTES:
        return CheckResult(name, FAIL, detail, fix)
    if free < DISK_WARN_BYTES:
        return CheckResult(name, WARN, detail, fix)
    return CheckResult(name, PASS, detail)
