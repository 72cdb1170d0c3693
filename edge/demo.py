"""The demo clip: a real face drifting over a plain background, generated at run time.

It lets the daemon run end to end with no camera and no video file
(``camera.source = "demo"``). The face is Eileen Collins' NASA portrait
(public domain, via scikit-image's ``astronaut``), shipped as
``edge/assets/astronaut_face.jpg``. It moves slowly along a figure of eight
and breathes a little in scale, so detection, tracking and smoothing all have
something to do; the path is periodic, so a looped clip has no jump.
"""

from __future__ import annotations

import math
from importlib import resources

import cv2
import numpy as np

from edge.preprocess import Box

FACE_ASSET = "astronaut_face.jpg"
# Where the Haar cascade finds the face inside the asset (180x200); the demo's ground truth.
FACE_IN_ASSET = Box(42, 47, 95, 95)

_BASE_SCALE = 1.35  # face of about 128 px in a 480-line frame
_SCALE_SWING = 0.12
_SWING_X = 0.22  # of the frame width
_SWING_Y = 0.08  # of the frame height


def load_face_image() -> np.ndarray:
    """The shipped face image, BGR uint8."""
    try:
        data = resources.files("edge.assets").joinpath(FACE_ASSET).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise RuntimeError(
            f"demo face image edge/assets/{FACE_ASSET} is missing ({exc}); reinstall the deepfer package"
        ) from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"demo face image edge/assets/{FACE_ASSET} cannot be decoded; reinstall the deepfer package")
    return image


def _background(width: int, height: int) -> np.ndarray:
    """A soft studio-like gradient: lighter at the top left, a little blue."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    light = 0.65 * (1.0 - ys) + 0.35 * (1.0 - xs)
    bgr = np.stack([110 + 90 * light, 100 + 80 * light, 85 + 70 * light], axis=2)
    out: np.ndarray = np.clip(bgr, 0, 255).astype(np.uint8)
    return out


def _feather_mask(face: np.ndarray) -> np.ndarray:
    """An elliptical alpha mask with a soft edge, so the photo's border does not show as a box."""
    h, w = face.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.46), int(h * 0.47)), 0, 0, 360, 1.0, -1)
    soft = max(3, (min(h, w) // 12) | 1)
    return cv2.GaussianBlur(mask, (soft, soft), 0)


class DemoClip:
    """Frame ``i`` of a ``frames``-long clip of ``width`` x ``height`` BGR images, and where its face is."""

    def __init__(self, frames: int = 240, width: int = 640, height: int = 480) -> None:
        self.frames = max(1, int(frames))
        self.width = int(width)
        self.height = int(height)
        self._face = load_face_image()
        alpha = _feather_mask(self._face)[:, :, None]
        # Face premultiplied by alpha, and 255 * (1 - alpha): the two halves of the blend.
        self._face_alpha = (self._face * alpha + 0.5).astype(np.uint8)
        self._keep = np.repeat((255.0 * (1.0 - alpha) + 0.5).astype(np.uint8), 3, axis=2)
        self._background = _background(self.width, self.height)
        fh, fw = self._face.shape[:2]
        # Keep the largest face (scale peak) inside the frame whatever the frame size.
        fit = min(self.width / (fw * (1 + _SCALE_SWING)), self.height / (fh * (1 + _SCALE_SWING)))
        self._base = min(_BASE_SCALE * self.height / 480.0, fit)

    def placement(self, i: int) -> tuple[int, int, float]:
        """Left, top and scale of the face patch in frame ``i``."""
        t = (i % self.frames) / self.frames
        scale = self._base * (1.0 + _SCALE_SWING * math.sin(2 * math.pi * t + 1.0))  # out of step with the path
        fh, fw = self._face.shape[:2]
        pw, ph = fw * scale, fh * scale
        cx = self.width / 2 + _SWING_X * self.width * math.sin(2 * math.pi * t)
        cy = self.height / 2 + _SWING_Y * self.height * math.sin(4 * math.pi * t)
        left = int(round(min(max(cx - pw / 2, 0), self.width - pw)))
        top = int(round(min(max(cy - ph / 2, 0), self.height - ph)))
        return left, top, scale

    def face_box(self, i: int) -> Box:
        """The face in frame ``i``, as the Haar cascade would box it."""
        left, top, scale = self.placement(i)
        f = FACE_IN_ASSET
        return Box(
            int(round(left + f.x * scale)), int(round(top + f.y * scale)), int(round(f.w * scale)), int(round(f.h * scale))
        )

    def frame(self, i: int) -> np.ndarray:
        left, top, scale = self.placement(i)
        fh, fw = self._face.shape[:2]
        pw = min(int(round(fw * scale)), self.width - left)
        ph = min(int(round(fh * scale)), self.height - top)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        # Alpha blending in saturating uint8 OpenCV arithmetic: a few times faster than numpy floats,
        # which matters because the demo feeds a pipeline that should run at well over 100 frames/s.
        face = cv2.resize(self._face_alpha, (pw, ph), interpolation=interp)
        keep = cv2.resize(self._keep, (pw, ph), interpolation=cv2.INTER_LINEAR)
        image = self._background.copy()
        region = image[top:top + ph, left:left + pw]
        cv2.add(cv2.multiply(region, keep, scale=1.0 / 255.0), face, dst=region)
        return image
