"""Training-time augmentation of 48x48 faces: numpy and OpenCV, the same on every Keras backend.

The same draws as Keras' random image layers (``RandomFlip``, ``RandomRotation``, ``RandomZoom``,
``RandomTranslation``, ``RandomBrightness``, ``RandomContrast``), in that order, with reflected
borders and bilinear sampling; but the four geometric steps are folded into one affine warp
per face, sampled once. That keeps the batch pipeline a few milliseconds on a CPU (Keras'
layers cost tens of milliseconds per batch there, run eagerly outside the compiled step) and
out of the accelerator's way on a GPU machine.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np


class Jitter(NamedTuple):
    """How far each augmentation may go (a recipe's settings); zero turns a step off."""

    flip: bool = True
    rotation_deg: float = 0.0  # uniform in +-rotation_deg
    zoom: float = 0.0  # sampled side = (1 + U(-zoom, zoom)) x the face's: > 1 zooms out
    translate: float = 0.0  # shift uniform in +-translate of the side, each axis
    brightness: float = 0.0  # + U(-b, b) x 255
    contrast: float = 0.0  # (x - mean) x U(1 - c, 1 + c) + mean, per face


def inverse_maps(n: int, size: int, jitter: Jitter, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, 3) affine maps from output to input pixel coordinates (for ``cv2.WARP_INVERSE_MAP``).

    Output p goes back through the steps in reverse: translation, zoom and rotation about the
    centre, then the mirror image.
    """
    c = (size - 1) / 2.0
    flip = rng.random(n) < 0.5 if jitter.flip else np.zeros(n, bool)
    angle = np.deg2rad(rng.uniform(-jitter.rotation_deg, jitter.rotation_deg, n)) if jitter.rotation_deg else np.zeros(n)
    zoom = 1.0 + rng.uniform(-jitter.zoom, jitter.zoom, n) if jitter.zoom else np.ones(n)
    shift = rng.uniform(-jitter.translate, jitter.translate, (n, 2)) * size if jitter.translate else np.zeros((n, 2))
    cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
    maps = np.empty((n, 2, 3))
    # p_in = c + zoom * R(angle) (p_out + shift - c)
    maps[:, 0, 0], maps[:, 0, 1] = cos, -sin
    maps[:, 1, 0], maps[:, 1, 1] = sin, cos
    q = shift - c
    maps[:, 0, 2] = c + cos * q[:, 0] - sin * q[:, 1]
    maps[:, 1, 2] = c + sin * q[:, 0] + cos * q[:, 1]
    # Mirror image last: x_in -> (size - 1) - x_in.
    maps[flip, 0, :] *= -1.0
    maps[flip, 0, 2] += size - 1
    return maps


def augment(faces: np.ndarray, jitter: Jitter, rng: np.random.Generator) -> np.ndarray:
    """Randomly jittered copies of ``faces`` ((N, H, W) or (N, H, W, 1), 0..255), as float32 in 0..255."""
    x = np.asarray(faces, np.float32)
    squeeze = x.ndim == 4
    if squeeze:
        x = x[..., 0]
    n, h, w = x.shape
    out = np.empty_like(x)
    geometric = jitter.flip or jitter.rotation_deg or jitter.zoom or jitter.translate
    if geometric:
        for i, m in enumerate(inverse_maps(n, w, jitter, rng)):
            out[i] = cv2.warpAffine(x[i], m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REFLECT)
    else:
        out[:] = x
    if jitter.brightness:
        out += np.asarray(rng.uniform(-jitter.brightness, jitter.brightness, n) * 255.0, np.float32)[:, None, None]
        np.clip(out, 0.0, 255.0, out=out)
    if jitter.contrast:
        mean = out.mean(axis=(1, 2), keepdims=True)
        factor = np.asarray(rng.uniform(1.0 - jitter.contrast, 1.0 + jitter.contrast, n), np.float32)[:, None, None]
        out = (out - mean) * factor + mean
        np.clip(out, 0.0, 255.0, out=out)
    return out[..., None] if squeeze else out
