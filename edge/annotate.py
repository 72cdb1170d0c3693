"""Boxes and emotion labels drawn onto a copy of a frame, for people to look at (``analyze --annotate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from edge.preprocess import Box

# BGR, one per emotion in FER2013 order: warm for the negative ones, green for happy, grey for neutral.
COLOURS = {
    "angry": (40, 40, 230), "disgust": (40, 140, 120), "fear": (170, 60, 170), "happy": (60, 200, 60),
    "sad": (200, 120, 40), "surprise": (20, 200, 230), "neutral": (170, 170, 170),
}


class Label(NamedTuple):
    box: Box
    emotion: str
    confidence: float


def draw(image: np.ndarray, labels: Sequence[Label]) -> np.ndarray:
    """A copy of ``image`` (BGR) with each face's box and ``emotion confidence`` above it."""
    out = image.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 320))
    scale = max(0.4, min(h, w) / 900)
    for box, emotion, confidence in labels:
        colour = COLOURS.get(emotion, (255, 255, 255))
        cv2.rectangle(out, (box.x, box.y), (box.x + box.w, box.y + box.h), colour, thick)
        text = f"{emotion} {confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = box.y - th - base - 2 if box.y - th - base - 2 >= 0 else box.y + box.h
        cv2.rectangle(out, (box.x, top), (box.x + tw + 4, top + th + base + 2), colour, -1)
        cv2.putText(out, text, (box.x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out
