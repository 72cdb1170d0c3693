"""Face detectors, picked by ``detector.kind``.

Both detectors work on a downscaled copy of the frame (``detector.detect_width``
wide) because detection cost grows with the pixel count and faces worth
classifying are large; boxes are mapped back to ``Frame.image`` pixels.

- ``haar``: OpenCV's frontal-face Haar cascade, shipped with opencv-python(-headless) 4.x.
  Uses ``Frame.gray`` when the source supplies one (the CSI lores Y plane).
- ``yunet``: OpenCV's YuNet CNN (``cv2.FaceDetectorYN``), far better recall and
  scores; needs the ONNX file from OpenCV Zoo (``detector.model``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge.preprocess import Box, shrink, to_gray
from edge.protocols import Detection, FaceDetector, Frame, MissingExtra, Registry
from edge.settings import ConfigError, DetectorSettings

log = logging.getLogger(__name__)

DETECTORS: Registry[FaceDetector] = Registry("face detector")

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_WINDOW = 24  # the cascade's training window: the smallest face it can see, in detection pixels
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URL = "https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet"
YUNET_NMS = 0.3
YUNET_TOP_K = 5000


def create_detector(settings: DetectorSettings) -> FaceDetector:
    """Build the detector ``settings.kind`` names."""
    return DETECTORS.create(settings.kind, settings)


def _downscale(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Shrink ``image`` to ``width`` pixels wide (never enlarge); returns it and original/new scale."""
    w = image.shape[1]
    if w <= width:
        return image, 1.0
    height = max(1, int(round(image.shape[0] * width / w)))
    return shrink(image, width, height), w / width


def _to_frame_box(x: float, y: float, w: float, h: float, scale: float, frame_w: int, frame_h: int, min_face: int) -> Box | None:
    """Scale a detection-space box to frame pixels and clip it to the frame.

    None when the face is smaller than ``min_face`` (the geometric mean of its
    sides, before clipping, so a face half out of the frame still counts at its
    real size) or nothing of it is left inside the frame.
    """
    if float(np.sqrt(max(0.0, w * h))) * scale < min_face:
        return None
    x0, y0 = max(0, int(round(x * scale))), max(0, int(round(y * scale)))
    x1, y1 = min(frame_w, int(round((x + w) * scale))), min(frame_h, int(round((y + h) * scale)))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)


@DETECTORS.register("haar")
class HaarDetector:
    """OpenCV's Haar cascade on a grayscale image ``detect_width`` wide.

    The smallest face it can find is 24 detection pixels, i.e.
    ``24 * frame_width / detect_width`` frame pixels, or ``min_face`` if larger.
    """

    name = "haar"

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        cascades = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = Path(cascades) / HAAR_CASCADE if cascades else None
        if not hasattr(cv2, "CascadeClassifier") or path is None or not path.is_file():
            raise MissingExtra(
                f"OpenCV {cv2.__version__} ships no Haar cascades ({HAAR_CASCADE}); OpenCV 5 dropped them: "
                "install `opencv-python-headless<5`, or set detector.kind = \"yunet\" with detector.model"
            )
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise MissingExtra(f"Haar cascade {path} cannot be loaded; reinstall `opencv-python-headless<5`")

    def detect(self, frame: Frame) -> list[Detection]:
        frame_h, frame_w = frame.image.shape[:2]
        if frame.gray is not None:
            gray, scale = frame.gray, frame.gray_scale
        else:
            gray, scale = to_gray(frame.image), 1.0
        small, shrink = _downscale(gray, self.settings.detect_width)
        scale *= shrink
        min_face = self.settings.min_face
        side = max(1, int(min_face / scale))
        found = self._cascade.detectMultiScale(
            small,
            scaleFactor=self.settings.haar_scale_factor,
            minNeighbors=self.settings.haar_min_neighbors,
            minSize=(side, side),
        )
        out: list[Detection] = []
        for x, y, w, h in found:
            box = _to_frame_box(x, y, w, h, scale, frame_w, frame_h, min_face)
            if box is not None:
                out.append(Detection(box, 1.0))
        return out


@DETECTORS.register("yunet")
class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``) on the BGR frame downscaled to ``detect_width``."""

    name = "yunet"

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        model = settings.model
        if model is None:
            raise ConfigError(f"detector.model is not set; detector.kind = \"yunet\" needs {YUNET_FILE} "
                              f"(download it from OpenCV Zoo: {YUNET_URL})")
        model = Path(model).expanduser()
        if not model.is_file():
            raise ConfigError(f"detector.model: {model} does not exist; download {YUNET_FILE} from OpenCV Zoo ({YUNET_URL})")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise MissingExtra(f"OpenCV {cv2.__version__} has no FaceDetectorYN; install `opencv-python-headless>=4.8,<5`")
        self._input_size = (320, 320)
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model), "", self._input_size, settings.score_threshold, YUNET_NMS, YUNET_TOP_K
            )
        except cv2.error as exc:
            raise ConfigError(f"detector.model: {model} cannot be loaded as a YuNet ONNX model ({exc.err}); "
                              f"use {YUNET_FILE} from OpenCV Zoo ({YUNET_URL})") from None

    def detect(self, frame: Frame) -> list[Detection]:
        frame_h, frame_w = frame.image.shape[:2]
        small, scale = _downscale(frame.image, self.settings.detect_width)
        size = (small.shape[1], small.shape[0])
        if size != self._input_size:
            self._net.setInputSize(size)
            self._input_size = size
        _, faces = self._net.detect(small)
        out: list[Detection] = []
        if faces is None:
            return out
        min_face = self.settings.min_face
        for row in faces:
            box = _to_frame_box(row[0], row[1], row[2], row[3], scale, frame_w, frame_h, min_face)
            if box is not None:
                out.append(Detection(box, float(row[-1])))
        return out
