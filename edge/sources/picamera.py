"""Raspberry Pi CSI cameras through picamera2 (libcamera).

Two streams are configured, as picamera2's own face-detection examples do: a
``main`` stream in RGB888 (which picamera2 lays out B, G, R: OpenCV's BGR) for
cropping faces, and a small ``lores`` YUV420 stream whose Y plane is already
the grayscale image the detector wants, at no conversion cost.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge.protocols import MissingExtra, SourceError
from edge.settings import CameraSettings
from edge.sources.base import SOURCES
from edge.sources.live import Grab, LiveCapture

log = logging.getLogger(__name__)

PICAMERA2_MISSING = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` and create the venv "
    "with --system-site-packages (see deploy/install.sh)"
)
CSI_HINT = (
    "check that the camera ribbon is seated and the camera detected (`rpicam-hello --list-cameras`), "
    "and that no other program (rpicam-*, another daemon) is using it"
)


def lores_size(width: int, height: int, lores_width: int) -> tuple[int, int]:
    """The lores stream size: ``lores_width`` wide (at most the main width), same aspect, even dimensions."""
    w = max(2, min(lores_width, width) // 2 * 2)
    h = max(2, int(round(w * height / width / 2.0)) * 2)
    return w, h


class PiCamera:
    """``edge.sources.live.Camera`` over a started ``Picamera2``."""

    def __init__(self, camera_num: int, width: int, height: int, lores_width: int, fps: float) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise MissingExtra(PICAMERA2_MISSING) from exc
        try:
            picam2 = Picamera2(camera_num)
        except Exception as exc:  # no camera gives IndexError, a busy one RuntimeError; both need the hint
            raise SourceError(f"CSI camera {camera_num} cannot be opened: {exc}; {CSI_HINT}") from exc
        try:
            frame_us = int(round(1_000_000 / fps))
            config = picam2.create_preview_configuration(
                main={"size": (width, height), "format": "RGB888"},
                lores={"size": lores_size(width, height, lores_width), "format": "YUV420"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                display=None,
            )
            picam2.configure(config)
            # The ISP may align sizes; boxes must map with what was actually configured.
            main_w, main_h = picam2.stream_configuration("main")["size"]
            lores_w, lores_h = picam2.stream_configuration("lores")["size"]
            picam2.start()
        except Exception as exc:
            _close(picam2)
            raise SourceError(f"CSI camera {camera_num} cannot be configured for {width}x{height}: {exc}; {CSI_HINT}") from exc
        self._picam2 = picam2
        self._lores_size = (int(lores_w), int(lores_h))
        self._gray_scale = float(main_w) / float(lores_w)
        log.info("CSI camera %d started: main %dx%d, lores %dx%d", camera_num, main_w, main_h, lores_w, lores_h)

    def read(self) -> Grab | None:
        arrays, _metadata = self._picam2.capture_arrays(["main", "lores"])
        main, lores = arrays
        w, h = self._lores_size
        # YUV420 comes as a (h * 3/2, stride) array: the first h rows are Y, each padded to the stride.
        gray = np.ascontiguousarray(lores[:h, :w])
        return Grab(main, gray, self._gray_scale)

    def release(self) -> None:
        _close(self._picam2)


def _close(picam2: Any) -> None:
    for step in ("stop", "close"):
        try:
            getattr(picam2, step)()
        except Exception as exc:  # stopping a camera that never started is fine
            log.debug("picamera2 %s failed: %r", step, exc)


class PiCameraSource(LiveCapture):
    """A CSI camera; picamera2 is imported by ``open()``, so other sources work without it."""

    def __init__(self, settings: CameraSettings, camera_num: int = 0) -> None:
        super().__init__(
            f"csi:{camera_num}",
            lambda: PiCamera(camera_num, settings.width, settings.height, settings.lores_width, settings.fps),
            backoff_s=settings.reopen_backoff_s,
            backoff_max_s=settings.reopen_backoff_max_s,
            hint=CSI_HINT,
        )


@SOURCES.register("csi")
def csi_source(settings: CameraSettings, target: str) -> PiCameraSource:
    return PiCameraSource(settings, int(target or 0))
