"""Running a key server bench script from a test, as a user would (its own process, a throwaway cwd)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """bench/<script> with these arguments; fails the test unless it exits 0."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run
