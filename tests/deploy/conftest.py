"""Fixtures for the deployment recipes: the install scripts run in `--root DIR` mode (they lay down every
file they would install and print, rather than run, every command), shared by the tests in this folder."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PI_INSTALL = REPO / "deploy" / "pi" / "install.sh"
KS_INSTALL = REPO / "deploy" / "keyserver" / "install.sh"
HOST_UNITS = Path("/usr/lib/systemd/system")


@dataclass
class DryRun:
    root: Path
    output: str

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def text(self, absolute: str) -> str:
        return self.path(absolute).read_text()

    def commands(self) -> list[str]:
        return [
            line.removeprefix("would run: ")
            for line in self.output.splitlines()
            if line.startswith("would run: ")
        ]


def dry_run(script: Path, root: Path, *args: str) -> DryRun:
    done = subprocess.run(
        ["bash", str(script), "--root", str(root), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return DryRun(root, done.stdout)


@pytest.fixture(scope="session")
def pi_root(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    return dry_run(
        PI_INSTALL,
        tmp_path_factory.mktemp("pi-root"),
        "--station-id",
        "wound clinic/1",
        "--kernel",
        "6.6.51+rpt-rpi-v8",
    )


@pytest.fixture(scope="session")
def ks_root(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    return dry_run(KS_INSTALL, tmp_path_factory.mktemp("ks-root"), "--hostname", "keys.clinic.test")


def add_host_units_and_stubs(root: Path, executables: list[str]) -> None:
    """Make `systemd-analyze verify --root=ROOT` meaningful: the distribution's units (targets the station
    units order against) and stub executables at the paths the units run (the venv is not built here)."""
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(HOST_UNITS, units, symlinks=True)
    for exe in executables:
        stub = root / exe.lstrip("/")
        if not stub.exists():
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
