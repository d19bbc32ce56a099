"""`kiosk scan` as a user runs it: a subprocess, JSON lines out, a clear error for a bad file."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from kiosk.hardware import scenes


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiosk.cli", "scan", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    paths = {}
    for name in ("wristband-pdf417", "wristband-gs1-128", "wound"):
        paths[name] = folder / f"{name}.jpg"
        cv2.imwrite(str(paths[name]), scenes.render(name, 1280, 720))
    return paths


def test_json_output(images) -> None:
    result = run(
        "--json", str(images["wristband-pdf417"]), str(images["wristband-gs1-128"]), str(images["wound"])
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [
        str(images[n]) for n in ("wristband-pdf417", "wristband-gs1-128", "wound")
    ]
    assert all(set(line) == {"file", "codes", "ms"} and line["ms"] > 0 for line in lines)
    (pdf417,) = lines[0]["codes"]
    assert pdf417["format"] == "PDF417"
    assert pdf417["text"].startswith("PID|1||MRN0012345")
    assert pdf417["fields"] == {
        "mrn": "MRN0012345",
        "issuer": "STMARY",
        "name": "RIVERA, JAMIE",
        "dob": "1980-01-01",
    }
    (gs1,) = lines[1]["codes"]
    assert (gs1["format"], gs1["text"]) == ("GS1-128", "(8018)735000000000123458")
    assert gs1["fields"] == {"mrn": "735000000000123458", "issuer": "GS1 GSRN"}
    assert lines[2]["codes"] == []


def test_readable_output(images) -> None:
    result = run(str(images["wristband-gs1-128"]), str(images["wound"]))
    assert result.returncode == 0
    first, second = result.stdout.splitlines()
    assert "GS1-128: (8018)735000000000123458  [patient: mrn=735000000000123458, issuer=GS1 GSRN]" in first
    assert "no code found" in second


def test_missing_and_unreadable_files_exit_1_naming_the_file(images, tmp_path) -> None:
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    missing = tmp_path / "missing.jpg"
    result = run("--json", str(missing), str(not_image), str(images["wristband-pdf417"]))
    assert result.returncode == 1
    assert f"{missing}: no such file" in result.stderr
    assert f"{not_image}: not an image" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 1  # the good file was still scanned


def test_no_arguments_is_a_usage_error() -> None:
    assert run().returncode == 2
