"""Screen 4, capture: live preview, the on-screen button or the GPIO button/pedal, a review strip of
thumbnails (served from memory), retake and delete, and a body site per photo picked on the body map."""

from __future__ import annotations

import contextlib

from flask import Blueprint, redirect, request, url_for
from werkzeug.wrappers import Response

from kiosk.app import bodymap
from kiosk.app.common import needs, render, runtime
from kiosk.app.i18n import _
from kiosk.session import Session

bp = Blueprint("capture", __name__)
LONG_POLL_SECONDS = 20.0


@bp.get("/capture")
@needs("consent")
def index(s: Session) -> str:
    rt = runtime()
    rt.stage_mock_scene("capture")
    return render(
        "capture.html",
        s=s,
        site=bodymap.describe(s.current_site),
        camera_error=rt.camera_error and _("Camera not connected — call IT."),
        gpio=rt.gpio is not None,
    )


@bp.post("/capture/shoot")
@needs("consent")
def shoot(s: Session) -> Response:
    runtime().request_capture()
    return Response(status=204)


@bp.get("/capture/strip")
@needs("consent", touch=False)
def strip(s: Session) -> str:
    """The review strip; with ?v=N it waits (long poll) until the photos change from version N."""
    known = request.args.get("v", type=int)
    if known is not None and known == s.version:
        s.wait_for_change(known, LONG_POLL_SECONDS)
    if not s.active:
        return ""
    return render("_strip.html", s=s, describe=bodymap.describe)


@bp.get("/capture/photo/<photo_id>/thumb.jpg")
@needs("consent", touch=False)
def thumb(s: Session, photo_id: str) -> Response:
    photo = s.photo(photo_id)
    if photo is None or not photo.thumbnail:
        return Response(status=404)
    return Response(photo.thumbnail, mimetype="image/jpeg")


@bp.get("/capture/photo/<photo_id>")
@needs("consent")
def photo(s: Session, photo_id: str) -> str | Response:
    item = s.photo(photo_id)
    if item is None:
        return redirect(url_for("capture.index"))
    return _site_page(s, item.body_site, photo_id=photo_id, notes=item.notes, number=s.photos.index(item) + 1)


def _site_page(s: Session, site, **extra) -> str:  # type: ignore[no-untyped-def]
    view = request.args.get("view") or (site.view if site and site.view else "front")
    return render(
        "bodymap.html",
        s=s,
        regions=[r for r in bodymap.REGIONS if r.view == view],
        view=view,
        view_box=bodymap.VIEW_BOX,
        selected=bodymap.region_key_for(site),
        laterality=site.laterality if site else None,
        site_text=bodymap.describe(site),
        **extra,
    )


@bp.post("/capture/photo/<photo_id>")
@needs("consent")
def photo_submit(s: Session, photo_id: str) -> str | Response:
    item = s.photo(photo_id)
    if item is None:
        return redirect(url_for("capture.index"))
    action = request.form.get("action", "save")
    if action == "delete":
        s.delete_photo(photo_id)
        return redirect(url_for("capture.index"))
    if action == "retake":
        index = s.delete_photo(photo_id)
        s.retake_index = index
        return redirect(url_for("capture.index"))
    region = request.form.get("region", "")
    if region:
        with contextlib.suppress(KeyError):
            item.body_site = bodymap.body_site(region, request.form.get("laterality"))
        s.current_site = item.body_site
    item.notes = " ".join(request.form.get("notes", "").split())[:500]
    s.bump()
    return redirect(url_for("capture.index"))


@bp.get("/capture/site")
@needs("consent")
def site(s: Session) -> str:
    return _site_page(s, s.current_site, photo_id=None, notes="", number=None)


@bp.post("/capture/site")
@needs("consent")
def site_submit(s: Session) -> Response:
    region = request.form.get("region", "")
    try:
        s.current_site = bodymap.body_site(region, request.form.get("laterality")) if region else None
    except KeyError:
        return redirect(url_for("capture.site"))
    for item in s.photos:  # photos taken before a site was chosen get this one
        if item.body_site is None:
            item.body_site = s.current_site
    s.bump()
    return redirect(url_for("capture.index"))
