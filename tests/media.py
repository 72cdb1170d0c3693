"""Shared helpers for tests that use the real face images and videos in ``shared/data/faces``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACES = SHARED / "data" / "faces"
YUNET_MODEL = SHARED / "models" / "face_detection_yunet_2023mar.onnx"


def faces_dir() -> Path:
    """The face data folder, or skip the test with the reason when it is absent."""
    if not (FACES / "annotations.json").is_file():
        pytest.skip(f"face test data not found at {FACES} (the shared/ folder beside the checkout)")
    return FACES


def face_file(relative: str) -> Path:
    path = faces_dir() / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing from the shared face data")
    return path


def yunet_model() -> Path:
    if not YUNET_MODEL.is_file():
        pytest.skip(f"YuNet model not found at {YUNET_MODEL}")
    return YUNET_MODEL


def annotations() -> dict[str, Any]:
    return json.loads((faces_dir() / "annotations.json").read_text())


def video_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while limit is None or len(frames) < limit:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(image)
    finally:
        cap.release()
    assert frames, f"{path} decoded to no frames"
    return frames


def iou(a: tuple[int, int, int, int] | Any, b: tuple[int, int, int, int] | Any) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match(truth: list[Any], found: list[Any], threshold: float = 0.3) -> tuple[int, int]:
    """Greedy one-to-one matching by IoU; returns (ground-truth boxes found, false positives)."""
    pairs = sorted(((iou(t, f), ti, fi) for ti, t in enumerate(truth) for fi, f in enumerate(found)), reverse=True)
    used_t: set[int] = set()
    used_f: set[int] = set()
    for score, ti, fi in pairs:
        if score < threshold:
            break
        if ti not in used_t and fi not in used_f:
            used_t.add(ti)
            used_f.add(fi)
    return len(used_t), len(found) - len(used_f)
