"""The faces int8 conversion calibrates on: pure numpy, no TensorFlow.

The converter takes every activation's int8 range from what these faces produce, so they
are real training faces, every class represented, and their pixels span 0..255 (that
makes the uint8 input the raw pixel).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from train.data import FaceSet
from train.errors import ExportError

DEFAULT_CALIBRATION = 500


def calibration_set(data: FaceSet, n: int = DEFAULT_CALIBRATION, seed: int = 0) -> np.ndarray:
    """``n`` training faces, each class represented in proportion to its share (at least one
    face per class present), so rare expressions also shape the int8 activation ranges."""
    if n >= len(data):
        return data.x.copy()
    rng = np.random.default_rng(seed)
    counts = data.class_counts()
    picked: list[np.ndarray] = []
    for c in np.flatnonzero(counts):
        idx = np.flatnonzero(data.y == c)
        k = max(1, int(round(n * counts[c] / len(data))))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    chosen = rng.permutation(np.concatenate(picked))[:n]
    if len(chosen) < n:  # rounding left a few short: top up at random from the rest
        rest = np.setdiff1d(np.arange(len(data)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=n - len(chosen), replace=False)])
    return data.x[np.sort(chosen)]


def as_nhwc(faces: np.ndarray, channels: int) -> np.ndarray:
    """Faces (N, S, S[, C]) uint8 as the model's (N, S, S, channels); a grey face is repeated
    into 3 channels for an RGB model."""
    x = np.asarray(faces)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ExportError(f"calibration faces have shape {x.shape} and dtype {x.dtype}; expected (N, S, S[, C]) uint8")
    if x.shape[-1] != channels:
        x = np.repeat(x[..., :1], channels, axis=-1)
    return x


def spanning_calibration(faces: np.ndarray) -> np.ndarray:
    """Calibration faces whose pixels span 0..255 exactly.

    The converter takes the input's quantisation from the calibration range; when
    it spans 0..255 the uint8 input is the raw pixel (scale 1, zero point 0) and
    no grey level is merged. If the real faces do not reach both ends, one extra
    face is added: the first one with its contrast stretched, still a face.
    """
    if faces.min() == 0 and faces.max() == 255:
        return faces
    f = faces[0].astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return faces
    stretched = np.round((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return np.concatenate([faces, stretched[None]])


def representative_dataset(faces: np.ndarray) -> Iterator[list[np.ndarray]]:
    """What the converter calibrates on: one face at a time as float32 raw pixels, the
    same values the Keras model trained on (train.fit casts uint8 faces to float32)."""
    for face in faces:
        yield [face[None].astype(np.float32)]
