"""Decode every symbology from mock-camera frames: rotated, curved round a wrist, and never a phantom."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kiosk.hardware import scenes
from kiosk.hardware.camera_mock import MockCamera
from kiosk.hardware.scenes import Look
from kiosk.scan.decode import Scanner, scan

EXPECTED_FORMAT = {
    "code128": "Code 128",
    "gs1-128": "GS1-128",
    "datamatrix": "DataMatrix",
    "gs1-datamatrix": "GS1 DataMatrix",
    "pdf417": "PDF417",
    "qr": "QR Code",
    "aztec": "Aztec",
}


def expected_text(symbology: str) -> str:
    # GS1 payloads are written in HRI form; decoded they are raw element strings
    return scenes.SYMBOLOGIES[symbology][2].replace("(8018)", "8018")


@pytest.fixture(scope="module")
def camera():
    with MockCamera(preview_size=(1280, 720), still_size=(1280, 720)) as camera:
        yield camera


@pytest.mark.parametrize("symbology", list(scenes.SYMBOLOGIES))
@pytest.mark.parametrize("angle", [0, 37, 124, 250])
def test_rotated_wristband(camera, symbology: str, angle: int) -> None:
    camera.show(
        f"wristband-{symbology}", Look(angle=angle, tilt=0.03, light=0.2, noise=2, jpeg=90, seed=angle)
    )
    codes = scan(camera.frame_array())
    assert [(c.format, c.text) for c in codes] == [(EXPECTED_FORMAT[symbology], expected_text(symbology))]
    assert codes[0].gs1 == symbology.startswith("gs1")


@pytest.mark.parametrize("symbology", list(scenes.SYMBOLOGIES))
def test_band_curved_round_a_wrist(camera, symbology: str) -> None:
    look = Look(
        angle=-28, bend=0.6, oblique=0.2, tilt=0.04, light=0.3, glare=0.3, defocus=0.7, noise=3, jpeg=85
    )
    camera.show(f"wristband-{symbology}", look)
    assert [c.text for c in scan(camera.frame_array())] == [expected_text(symbology)]


def test_staff_badge(camera) -> None:
    camera.show("staff-badge")
    (code,) = scan(camera.frame_gray())
    assert code.format == "GS1 DataMatrix" and code.text == "8017735000000000987654"


@pytest.mark.parametrize("background", ["wound", "text", "stripes", "checker", "clutter", "arm", "desk"])
def test_no_code_frames_give_no_codes(background: str) -> None:
    for seed in range(2):
        frame = scenes.render(
            "wound" if background == "wound" else "empty",
            1280,
            720,
            Look(background=background, seed=seed, noise=3),
        )
        assert Scanner().scan(frame).codes == []


def test_decoded_text_stays_out_of_repr_and_logs(camera, caplog) -> None:
    camera.show("wristband-qr")
    with caplog.at_level(logging.DEBUG):
        (code,) = scan(camera.frame_array())
    assert "MRN0012345" in code.text
    assert "MRN0012345" not in repr(code)
    assert "MRN0012345" not in caplog.text


def test_scan_result_reports_stage_and_time() -> None:
    frame = scenes.render("wristband-code128", 1280, 720, Look(angle=60, seed=3))
    result = Scanner().scan(frame)
    assert result.stage == "candidates"  # rows at 60 degrees: only the rectified cut-out decodes
    assert result.ms > 0
    assert Scanner(use_locator=False).scan(frame).codes == []
    blank = np.full((480, 640), 200, np.uint8)
    assert Scanner().scan(blank).stage == "none"


@pytest.mark.parametrize("symbology", ["datamatrix", "qr", "aztec"])
def test_light_on_dark_2d_code_is_read_from_a_cut_out(symbology: str) -> None:
    # the whole-frame pass skips zxing-cpp's inverted retry; the cut-out pass keeps it
    frame = 255 - scenes.render_band_scene(symbology, 1280, 720, Look(angle=20, tilt=0.03, noise=2, seed=5))
    result = Scanner().scan(frame)
    assert [c.text for c in result.codes] == [expected_text(symbology)]
    assert result.stage == "candidates"
