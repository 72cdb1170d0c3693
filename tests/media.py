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


def damaged_video(path: Path, frames: int = 200, bad: tuple[int, ...] = (100,)) -> Path:
    """A real MJPG AVI of ``frames`` numbered frames whose JPEG data for the ``bad`` frames is zeroed out."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (160, 120))
    assert writer.isOpened(), "OpenCV cannot write MJPG AVI files here"
    for i in range(frames):
        image = np.full((120, 160, 3), i % 256, np.uint8)
        cv2.putText(image, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]  # each frame is one JPEG
    assert len(starts) == frames
    for k in bad:
        end = starts[k + 1] if k + 1 < frames else len(data)
        data[starts[k]:end] = bytes(end - starts[k])
    path.write_bytes(bytes(data))
    return path


def frames_opencv_reads_on(path: Path, tries: int = 1000) -> int:
    """Frames OpenCV decodes when a program reads on past failed reads (the reference for damaged files)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return sum(1 for _ in range(tries) if cap.read()[0])
    finally:
        cap.release()
