"""Face detectors, picked by ``detector.kind``.

Both detectors work on a downscaled copy of the frame (``detector.detect_width``
wide) because detection cost grows with the pixel count; boxes are mapped back
to ``Frame.image`` pixels.

- ``yunet`` (default): OpenCV's YuNet CNN (``cv2.FaceDetectorYN``), shipped in
  ``edge/models`` (MIT); finds small and turned faces the cascade misses, and is
  faster. ``detector.model`` points at another copy of the ONNX file.
- ``haar``: OpenCV's frontal-face Haar cascade, shipped with opencv-python(-headless) 4.x.
  Uses ``Frame.gray`` when the source supplies one (the CSI lores Y plane). Also
  the fallback, with a warning, when the YuNet model cannot be loaded.
"""

from __future__ import annotations

import logging
from importlib import resources
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
YUNET_TOP_K = 5000


def shipped_yunet() -> Path:
    return Path(str(resources.files("edge") / "models" / YUNET_FILE))


def create_detector(settings: DetectorSettings) -> FaceDetector:
    """Build the detector ``settings.kind`` names; YuNet falls back to Haar when its model cannot be loaded."""
    try:
        return DETECTORS.create(settings.kind, settings)
    except (ConfigError, MissingExtra) as exc:
        if settings.kind != "yunet":
            raise
        log.warning("%s; falling back to the Haar cascade, which misses small and turned faces", exc)
        return DETECTORS.create("haar", settings)


def downscale(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
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


def haar_cascade_path() -> Path | None:
    """The frontal-face cascade OpenCV ships, or None where it ships none (OpenCV 5)."""
    cascades = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = Path(cascades) / HAAR_CASCADE
    return path if cascades and path.is_file() else None


@DETECTORS.register("haar")
class HaarDetector:
    """OpenCV's Haar cascade on a grayscale image ``detect_width`` wide.

    The smallest face it can find is 24 detection pixels, i.e.
    ``24 * frame_width / detect_width`` frame pixels, or ``min_face`` if larger.
    """

    name = "haar"

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        path = haar_cascade_path()
        if not hasattr(cv2, "CascadeClassifier") or path is None:
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
        small, shrink = downscale(gray, self.settings.detect_width)
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
        model = Path(settings.model).expanduser() if settings.model is not None else shipped_yunet()
        if not model.is_file():
            fix = (f"download {YUNET_FILE} from OpenCV Zoo ({YUNET_URL})" if settings.model is not None
                   else "reinstall the package, or set detector.model to a copy of it")
            raise ConfigError(f"detector.model: {model} does not exist; {fix}")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise MissingExtra(f"OpenCV {cv2.__version__} has no FaceDetectorYN; install `opencv-python-headless>=4.8,<5`")
        self._input_size = (320, 320)
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model), "", self._input_size, settings.score_threshold, settings.nms_threshold, YUNET_TOP_K
            )
        except cv2.error as exc:
            raise ConfigError(f"detector.model: {model} cannot be loaded as a YuNet ONNX model ({exc.err}); "
                              f"use {YUNET_FILE} from OpenCV Zoo ({YUNET_URL})") from None

    def detect(self, frame: Frame) -> list[Detection]:
        frame_h, frame_w = frame.image.shape[:2]
        small, scale = downscale(frame.image, self.settings.detect_width)
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
