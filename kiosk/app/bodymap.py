"""Body map: front and back silhouettes whose regions carry SNOMED CT body structure codes.

Codes are the SNOMED CT concepts DICOM uses for anatomic regions (PS3.16 CID 4031 and related). Laterality
uses the SNOMED CT qualifier values 7771000 |Left|, 24028007 |Right| and 51440002 |Right and left|.

On the front view the patient faces the nurse, so the patient's right is on the left of the picture; on the
back view it is the other way round. Regions that come in pairs know which side of the patient they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kiosk.report.model import BodySite

LATERALITY_CODES = {"left": "7771000", "right": "24028007", "bilateral": "51440002"}
VIEW_BOX = "0 0 200 460"
Side = Literal["left", "right"] | None


@dataclass(frozen=True)
class Region:
    key: str
    code: str
    display: str
    view: Literal["front", "back"]
    side: Side
    shape: str  # "rect" or "ellipse"
    geometry: tuple[float, float, float, float]  # rect: x, y, w, h; ellipse: cx, cy, rx, ry

    @property
    def svg_attrs(self) -> dict[str, float]:
        a, b, c, d = self.geometry
        if self.shape == "rect":
            return {"x": a, "y": b, "width": c, "height": d, "rx": 6}
        return {"cx": a, "cy": b, "rx": c, "ry": d}


# (key, front code/display, back code/display, shape, geometry on the picture's left, paired?)
_PARTS: list[tuple[str, tuple[str, str], tuple[str, str], str, tuple[float, float, float, float], bool]] = [
    ("head", ("89545001", "Face"), ("69536005", "Head"), "ellipse", (100, 38, 24, 30), False),
    ("neck", ("45048000", "Neck"), ("45048000", "Neck"), "rect", (88, 66, 24, 20), False),
    ("trunk-upper", ("43799004", "Chest"), ("77568009", "Back"), "rect", (72, 88, 56, 62), False),
    (
        "trunk-lower",
        ("818981001", "Abdomen"),
        ("52612000", "Lumbar region"),
        "rect",
        (72, 150, 56, 54),
        False,
    ),
    ("shoulder", ("16982005", "Shoulder"), ("16982005", "Shoulder"), "ellipse", (62, 96, 15, 12), True),
    ("hip", ("26893007", "Groin"), ("46862004", "Buttock"), "rect", (72, 204, 28, 30), True),
    ("upper-arm", ("40983000", "Upper arm"), ("40983000", "Upper arm"), "rect", (42, 106, 20, 58), True),
    ("elbow", ("16953009", "Elbow"), ("16953009", "Elbow"), "ellipse", (51, 172, 11, 9), True),
    ("forearm", ("14975008", "Forearm"), ("14975008", "Forearm"), "rect", (40, 181, 21, 56), True),
    ("wrist", ("74670003", "Wrist"), ("74670003", "Wrist"), "rect", (41, 237, 19, 10), True),
    ("hand", ("85562004", "Hand"), ("85562004", "Hand"), "ellipse", (50, 262, 12, 16), True),
    ("thigh", ("68367000", "Thigh"), ("68367000", "Thigh"), "rect", (74, 234, 25, 86), True),
    ("knee", ("72696002", "Knee"), ("32361000", "Back of knee"), "ellipse", (86, 330, 13, 10), True),
    ("lower-leg", ("30021000", "Lower leg"), ("53840002", "Calf"), "rect", (75, 341, 22, 70), True),
    ("ankle", ("70258002", "Ankle"), ("70258002", "Ankle"), "rect", (76, 411, 20, 11), True),
    ("foot", ("56459004", "Foot"), ("416804009", "Heel"), "ellipse", (86, 433, 15, 10), True),
]
_SACRUM = Region("back-sacrum", "54735007", "Sacrum", "back", None, "rect", (90, 196, 20, 18))


def _mirror(shape: str, geometry: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    a, b, c, d = geometry
    return (200 - a - c, b, c, d) if shape == "rect" else (200 - a, b, c, d)


def _build() -> list[Region]:
    regions: list[Region] = []
    for view in ("front", "back"):
        # on the front view the picture's left is the patient's right
        picture_left: Side = "right" if view == "front" else "left"
        picture_right: Side = "left" if view == "front" else "right"
        for key, front, back, shape, geometry, paired in _PARTS:
            code, display = front if view == "front" else back
            if paired:
                regions.append(Region(f"{view}-{key}-a", code, display, view, picture_left, shape, geometry))
                mirrored = _mirror(shape, geometry)
                regions.append(Region(f"{view}-{key}-b", code, display, view, picture_right, shape, mirrored))
            else:
                regions.append(Region(f"{view}-{key}", code, display, view, None, shape, geometry))
        if view == "back":
            regions.append(_SACRUM)
    return regions


REGIONS: list[Region] = _build()
BY_KEY = {r.key: r for r in REGIONS}


def body_site(region_key: str, laterality: str | None) -> BodySite:
    """The report's BodySite for a tapped region and the chosen laterality (KeyError if unknown)."""
    region = BY_KEY[region_key]
    side = laterality if laterality in LATERALITY_CODES else None
    return BodySite(
        code=region.code,
        display=region.display,
        laterality=side,  # type: ignore[arg-type]
        laterality_code=LATERALITY_CODES.get(side or ""),
        view=region.view,
    )


def describe(site: BodySite | None) -> str:
    if site is None:
        return ""
    side = {"left": "Left", "right": "Right", "bilateral": "Both sides"}.get(site.laterality or "", "")
    view = {"front": "front", "back": "back"}.get(site.view or "", "")
    text = f"{side} {site.display.lower()}" if side else site.display
    return f"{text} ({view})" if view else text


def region_key_for(site: BodySite | None) -> str | None:
    """The region a stored site came from (for highlighting it again)."""
    if site is None:
        return None
    for region in REGIONS:
        same_side = (
            region.side is None or site.laterality in (None, "bilateral") or region.side == site.laterality
        )
        if region.code == site.code and region.view == site.view and same_side:
            return region.key
    return None
