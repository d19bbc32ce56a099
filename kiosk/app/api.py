"""Small endpoints the pages call: idle status, activity, keyboard-wedge scans and the live preview."""

from __future__ import annotations

import threading
import time
import weakref

from flask import Blueprint, jsonify, request, session
from werkzeug.wrappers import Response

from kiosk.app import patient, signin
from kiosk.app.common import current, is_admin, runtime
from kiosk.app.i18n import _
from kiosk.doctor import FAIL, PASS, CheckResult, overall, run_checks
from kiosk.hardware.preview import MJPEG_MIMETYPE, mjpeg_stream
from kiosk.scan.wedge import WedgeDetector

bp = Blueprint("api", __name__)

HEALTH_TTL_SECONDS = 30.0  # the checks probe the network; monitoring polls often
_health_cache: weakref.WeakKeyDictionary[object, tuple[float, list[CheckResult]]] = (
    weakref.WeakKeyDictionary()
)
_health_lock = threading.Lock()


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """`kiosk doctor` for monitoring: 200 unless a check fails (503). No patient data, no session needed."""
    rt = runtime()
    with _health_lock:
        cached = _health_cache.get(rt)
        if cached is None or time.monotonic() - cached[0] > HEALTH_TTL_SECONDS:
            # No hardware probes: this process owns the camera and the pins; report its own view instead.
            cached = (time.monotonic(), run_checks(rt.config, hardware=False))
            _health_cache[rt] = cached
    camera = CheckResult(
        "camera (station app)",
        PASS if rt.camera is not None else FAIL,
        "frames arriving" if rt.camera is not None else (rt.camera_error or "no camera"),
        "" if rt.camera is not None else "check the camera cable, then `systemctl restart kiosk`",
    )
    results = [camera, *cached[1]]
    status = overall(results)
    body = {"status": status, "checks": [r.as_dict() for r in results]}
    return jsonify(body), 503 if status == FAIL else 200


PREVIEW_FPS = 10.0


@bp.get("/api/status")
def status() -> Response:
    """Polled every second by session pages; does not count as activity."""
    rt = runtime()
    s = current()
    body: dict[str, object] = {"session": s is not None, "camera": rt.camera is not None}
    if s is not None:
        remaining = rt.sessions.remaining(s)
        body.update(remaining=round(remaining, 1), warn=remaining <= rt.config.ui.idle_warning)
    else:
        ended = rt.sessions.ended(session.get("sid"))
        body["ended"] = ended.reason if ended else None
    return jsonify(body)


@bp.post("/api/activity")
def activity() -> Response:
    s = current()
    if s is not None:
        s.touch()
    return jsonify(session=s is not None)


@bp.post("/api/wedge")
def wedge() -> Response:
    """A burst of keys from a USB keyboard-wedge scanner, as the page saw them: [[key, seconds], ...].

    The page forwards fast bursts ending in Enter; kiosk.scan.wedge decides whether it was a scanner (and
    parses the payload), exactly as for any other wedge input.
    """
    rt = runtime()
    data = request.get_json(silent=True) or {}
    keys = data.get("keys") or []
    detector = WedgeDetector(max_gap=rt.config.ui.wedge_max_gap_ms / 1000, rules=tuple(rt.config.scan_rule))
    scan = None
    try:
        for key, at in keys[:512]:
            scan = detector.feed(str(key), float(at))
    except (TypeError, ValueError):
        return jsonify(message=_("Scan not understood — try again.")), 400
    if scan is None:
        return jsonify(ignored=True)
    s = current()
    if data.get("screen") == "signin" and s is None:
        return jsonify(**signin.badge_from_wedge(scan.identity, scan.text))
    if data.get("screen") == "patient" and s is not None and s.patient is None:
        s.touch()
        return jsonify(**patient.outcome(s, scan.identity, "keyboard-wedge", None))
    return jsonify(ignored=True)


@bp.get("/preview.mjpg")
def preview() -> Response:
    """Live preview for the sign-in, patient, capture and admin camera screens (loopback only)."""
    rt = runtime()
    if rt.camera is None:
        return Response(status=503)
    if current() is None and not is_admin() and request.args.get("screen") != "signin":
        return Response(status=403)
    fps = min(PREVIEW_FPS, rt.config.camera.preview_fps)
    return Response(mjpeg_stream(rt.camera, fps=fps), mimetype=MJPEG_MIMETYPE, direct_passthrough=True)
