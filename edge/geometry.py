"""Face boxes and how a detector's box becomes the model's square crop: pure geometry, no OpenCV."""

from __future__ import annotations

import math
from typing import NamedTuple


class Box(NamedTuple):
    """A face box in frame pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return max(0, self.w) * max(0, self.h)


class CropGeometry(NamedTuple):
    """How a detector's box maps onto the square the model was trained on.

    ``basis`` is the length the other numbers are in units of: ``"geomean"``,
    the geometric mean of the box's sides (fitted per detector by
    ``tools/fit_crop_geometry.py``, since detectors disagree on aspect), or
    ``"max"``, its longer side (the margin-only framing of older bundles).
    The square's side is ``scale`` bases; its centre sits ``dx``, ``dy`` bases
    right of and below the box's centre.
    """

    scale: float
    dx: float = 0.0
    dy: float = 0.0
    basis: str = "geomean"

    @classmethod
    def from_margin(cls, margin: float) -> CropGeometry:
        """The box's longer side plus ``margin`` of it on every side, centred on the box."""
        return cls(1.0 + 2.0 * margin, 0.0, 0.0, "max")


BASES = ("geomean", "max")


def crop_square(box: Box, geometry: CropGeometry) -> Box:
    """The square face crop (in frame pixels, possibly past the frame's edges) for a detector box."""
    if geometry.basis == "max":
        unit = float(max(box.w, box.h))
    elif geometry.basis == "geomean":
        unit = math.sqrt(max(box.w, 0) * max(box.h, 0))
    else:
        raise ValueError(f"unknown crop basis {geometry.basis!r}; choose one of {', '.join(BASES)}")
    side = geometry.scale * unit
    cx = box.x + box.w / 2.0 + geometry.dx * unit
    cy = box.y + box.h / 2.0 + geometry.dy * unit
    return Box(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), max(1, int(round(side))), max(1, int(round(side))))


def iou(a: Box, b: Box) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0
