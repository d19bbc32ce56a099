"""Admin screens, behind the admin PIN: settings, destinations, outbox (with retry), enrollment, camera test
and barcode test. The admin sign-in is separate from the nurse's session and ends after 10 idle minutes."""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout

from flask import Blueprint, current_app, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response

from kiosk import keyring
from kiosk import station as station_wiring
from kiosk.app.common import admin_begin, admin_end, needs_admin, render, runtime
from kiosk.app.i18n import _
from kiosk.app.signin import verify_pin
from kiosk.keyserver_client import KeyServerError
from kiosk.outbox.worker import status as outbox_status

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAX_FAILURES = 5
LOCKOUT_SECONDS = 60.0
TABS = ("settings", "destinations", "outbox", "enroll", "camera", "scan")


def _failures() -> dict[str, float]:
    return current_app.extensions.setdefault("station_admin_failures", {"count": 0, "until": 0.0})


@bp.get("/login")
def login() -> str:
    return render("admin_login.html", s=None, enabled=bool(runtime().config.ui.admin_pin_hash))


@bp.post("/login")
def login_submit() -> str | Response:
    rt = runtime()
    failures = _failures()
    if time.monotonic() < failures["until"]:
        return render(
            "admin_login.html", s=None, enabled=True, error=_("Too many wrong PINs. Wait a minute.")
        )
    if not verify_pin(rt.config.ui.admin_pin_hash, request.form.get("pin", "").strip()):
        failures["count"] += 1
        if failures["count"] >= MAX_FAILURES:
            failures["count"], failures["until"] = 0, time.monotonic() + LOCKOUT_SECONDS
        rt.events.record("admin-sign-in-refused")
        return render("admin_login.html", s=None, enabled=bool(rt.config.ui.admin_pin_hash),
                      error=_("Wrong PIN."))  # fmt: skip
    failures["count"] = 0
    admin_begin()
    rt.events.record("admin-signed-in", actor="admin")
    return redirect(url_for("admin.index"))


@bp.post("/logout")
def logout() -> Response:
    admin_end()
    return redirect(url_for("signin.index"))


def _page(tab: str, **context: object) -> str:
    return render("admin.html", s=None, tab=tab, tabs=TABS, **context)


@bp.get("/")
@needs_admin
def index() -> str:
    rt = runtime()
    config = rt.config
    with rt._send_lock:  # the shared outbox connection
        current = outbox_status(rt.outbox)
    try:
        key_version: int | None = keyring.current(config.public_keys_file).version
    except keyring.KeyringError:
        key_version = None
    camera = rt.camera.info if rt.camera is not None else None
    return _page(
        "settings",
        config=config,
        camera=camera,
        camera_error=rt.camera_error,
        gpio_error=rt.gpio_error,
        gpio=rt.gpio,
        key_version=key_version,
        enrolled=config.credentials_file.exists(),
        outbox=current,
        events=list(reversed(rt.events.recent(15))),
    )


@bp.get("/destinations")
@needs_admin
def destinations() -> str:
    config = runtime().config
    rows = []
    for dest in config.destination:
        details = dest.model_dump(mode="json", exclude={"name", "type"})
        rows.append({"name": dest.name, "type": dest.type, "details": details})
    return _page("destinations", rows=rows)


@bp.get("/outbox")
@needs_admin
def outbox() -> str:
    return _page("outbox", **_outbox_context())


def _outbox_context() -> dict[str, object]:
    rt = runtime()
    with rt._send_lock:
        waiting = rt.outbox.deliveries(states=("pending", "sending", "failed"))
        done = rt.outbox.deliveries(states=("delivered", "dropped"))[-15:]
    return {"waiting": waiting, "done": list(reversed(done)), "now": time.time()}


@bp.post("/outbox/retry")
@needs_admin
def outbox_retry() -> str | Response:
    rt = runtime()
    report_id = request.form.get("report_id") or None
    with rt._send_lock:
        count = rt.outbox.retry(report_id)
    if rt.worker is not None:
        rt.worker.wake()
    rt.events.record("admin-outbox-retry", actor="admin", report_id=report_id, deliveries=count)
    message = _("%(count)s deliveries will be retried now.", count=count)
    if request.headers.get("HX-Request"):
        return render("_admin_outbox.html", s=None, message=message, **_outbox_context())
    return _page("outbox", message=message, **_outbox_context())


@bp.get("/enroll")
@needs_admin
def enroll() -> str:
    config = runtime().config
    return _page(
        "enroll",
        url=config.keyserver.url if config.keyserver else "",
        enrolled=config.credentials_file.exists(),
    )


@bp.post("/enroll")
@needs_admin
def enroll_submit() -> str:
    rt = runtime()
    url = request.form.get("url", "").strip()
    code = request.form.get("code", "").strip()
    context = {"url": url, "enrolled": rt.config.credentials_file.exists()}
    if not url or not code:
        return _page("enroll", error=_("Enter the key server address and the enrollment code."), **context)
    try:
        version = station_wiring.enroll(rt.config, url, code)
    except (KeyServerError, ValueError, OSError) as exc:
        return _page("enroll", error=_("Enrollment failed: %(reason)s", reason=str(exc)), **context)
    rt.events.record("enrolled", actor="admin", key_version=version)
    rt.start_worker()  # the key server destinations need the new credential
    context["enrolled"] = True
    return _page("enroll", message=_("Enrolled. Sealing to key version %(v)s.", v=version), **context)


@bp.get("/camera")
@needs_admin
def camera() -> str:
    rt = runtime()
    return _page("camera", camera=rt.camera.info if rt.camera else None, camera_error=rt.camera_error)


@bp.post("/camera")
@needs_admin
def camera_still() -> str:
    rt = runtime()
    context: dict[str, object] = {
        "camera": rt.camera.info if rt.camera else None,
        "camera_error": rt.camera_error,
    }
    if request.form.get("action") == "reopen":
        rt.reopen_camera()
        context.update(camera=rt.camera.info if rt.camera else None, camera_error=rt.camera_error)
        return _page("camera", **context)
    try:
        result = rt.request_test_still().result(timeout=30)
    except FutureTimeout:
        return _page("camera", error=_("The camera did not answer in time — call IT."), **context)
    except Exception as exc:
        return _page(
            "camera", error=_("Camera not connected — call IT. (%(reason)s)", reason=str(exc)), **context
        )
    current_app.extensions["station_test_still"] = result.preview
    return _page("camera", still=result, **context)


@bp.get("/camera/still.jpg")
@needs_admin
def camera_still_image() -> Response:
    data = current_app.extensions.get("station_test_still")
    if not data:
        return Response(status=404)
    return Response(data, mimetype="image/jpeg")


@bp.get("/scan")
@needs_admin
def scan() -> str:
    return _page("scan", seq=runtime().scanner.seq)


@bp.get("/scan/poll")
@needs_admin
def scan_poll() -> Response:
    rt = runtime()
    rt.scanner.want()
    hit = rt.scanner.latest(request.args.get("after", type=int) or 0, max_age=10)
    if hit is None:
        return jsonify(seq=rt.scanner.seq, error=rt.scanner.error, ms=round(rt.scanner.last_ms))
    identity = hit.identity
    return jsonify(
        seq=hit.seq,
        ms=round(rt.scanner.last_ms),
        format=hit.format,
        kind=identity.kind if identity else None,
        source=identity.source if identity else None,
        fields=dict(identity.fields) if identity else {},
        text=hit.text,
    )
