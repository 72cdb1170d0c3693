"""OpenCV-backed sources: V4L2 cameras, network streams (FFmpeg) and video files."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge.protocols import SourceError
from edge.settings import CameraSettings
from edge.sources.base import SOURCES, FiniteSource
from edge.sources.live import Grab, LiveCapture

log = logging.getLogger(__name__)

V4L2_HINT = (
    "check that the camera is plugged in (`v4l2-ctl --list-devices` or `ls /dev/video*`), that this user may use it "
    "(member of group `video`: `sudo usermod -aG video $USER`, or SupplementaryGroups=video in the systemd unit) "
    "and that no other program is using it"
)
STREAM_HINT = "check the URL, credentials and network, and that the stream plays elsewhere (e.g. `ffprobe URL`)"
STREAM_TIMEOUT_MS = 10_000
# Failed reads in a row that mark the end of a video file (fewer are damaged frames, skipped and counted).
MAX_BAD_RUN = 50


class CvCamera:
    """``edge.sources.live.Camera`` over a ``cv2.VideoCapture``."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap

    def read(self) -> Grab | None:
        if not self._cap.isOpened():
            return None
        ok, image = self._cap.read()
        return Grab(image) if ok and image is not None else None

    def release(self) -> None:
        self._cap.release()


def _v4l2_path(device: int | str) -> Path | None:
    if isinstance(device, int):
        return Path(f"/dev/video{device}") if sys.platform.startswith("linux") else None
    return Path(device)


def open_v4l2(device: int | str, width: int, height: int, fps: float) -> CvCamera:
    """Open a local camera through V4L2 (Linux) asking for MJPG at the requested size and rate."""
    label = f"camera {device}"
    path = _v4l2_path(device)
    if path is not None and sys.platform.startswith("linux"):
        if not path.exists():
            raise SourceError(f"{label}: {path} does not exist; {V4L2_HINT}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise SourceError(f"{label}: no permission to open {path}; add the user to group `video` "
                              "(`sudo usermod -aG video $USER`, then log in again) "
                              "or run the service with SupplementaryGroups=video")
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    cap = cv2.VideoCapture(device, api)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{label} cannot be opened; {V4L2_HINT}")
    # MJPG first: most USB cameras deliver full rate at 640x480 and above only compressed.
    if not cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG")):
        log.debug("%s: MJPG not offered; keeping the driver's default format", label)
    cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    cap.set(cv2.CAP_PROP_FPS, fps)
    got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS))
    log.info("%s opened: %dx%d at %.1f fps (asked %dx%d at %.1f)", label, got[0], got[1], got[2], width, height, fps)
    return CvCamera(cap)


def redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host/…`` so that logs and stats do not leak it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_stream(url: str) -> CvCamera:
    """Open a network stream with FFmpeg, with open and read timeouts so a dead server cannot hang us."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"stream {redact_url(url)} cannot be opened; {STREAM_HINT}")
    return CvCamera(cap)


class V4L2Source(LiveCapture):
    """A local camera (USB webcam, /dev/videoN, /dev/v4l/by-id/…) read by a capture thread."""

    def __init__(self, settings: CameraSettings, device: int | str) -> None:
        super().__init__(
            f"usb:{device}" if isinstance(device, int) else str(device),
            lambda: open_v4l2(device, settings.width, settings.height, settings.fps),
            backoff_s=settings.reopen_backoff_s,
            backoff_max_s=settings.reopen_backoff_max_s,
            hint=V4L2_HINT,
        )


class StreamSource(LiveCapture):
    """A network stream (RTSP, RTMP, HTTP MJPEG/HLS) read by a capture thread; the name hides any password."""

    def __init__(self, settings: CameraSettings, url: str) -> None:
        super().__init__(
            redact_url(url),
            lambda: open_stream(url),
            backoff_s=settings.reopen_backoff_s,
            backoff_max_s=settings.reopen_backoff_max_s,
            # Each failed read has already waited STREAM_TIMEOUT_MS; one is enough to call the stream gone.
            max_read_failures=1,
            hint=STREAM_HINT,
        )


@SOURCES.register("v4l2")
def v4l2_source(settings: CameraSettings, target: str) -> V4L2Source:
    return V4L2Source(settings, int(target) if target.isdigit() else target)


@SOURCES.register("stream")
def stream_source(settings: CameraSettings, target: str) -> StreamSource:
    return StreamSource(settings, target)


class VideoFileSource(FiniteSource):
    """Every frame of a video file, in order: as fast as they are read, or at the file's own rate
    (``realtime``). Each frame carries its position in the file (its timestamp in the stream, else
    its index over the container's frame rate)."""

    def __init__(self, path: Path, loop: bool, realtime: bool = False) -> None:
        super().__init__(f"file {path}", loop, realtime)
        self.path = path
        self._cap: cv2.VideoCapture | None = None
        self._fps = 0.0
        self._length = 0
        self._first = 0  # index of this pass's first frame
        self._previous = -1.0

    def _start(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"camera.source: video file {self.path} does not exist")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera.source: video file {self.path} cannot be decoded by OpenCV (FFmpeg); "
                              "check that it is a complete video file, or convert it: `ffmpeg -i IN -c:v libx264 OUT.mp4`")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = fps if 0 < fps < 1000 else 0.0
        self._length = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self._first = self._index
        self._previous = -1.0

    @property
    def fps(self) -> float:
        """The container's frame rate (0 when it does not say)."""
        return self._fps

    @property
    def length_s(self) -> float:
        """The clip's length as its container states it (0 when unknown); for progress reports."""
        return self._length / self._fps if self._fps and self._length else 0.0

    def _position(self, index: int) -> float | None:
        # The decoder's timestamp of the frame just read; containers without timestamps report 0 for
        # every frame, so fall back to index / fps (or 1/30 s per frame when even that is unknown).
        n = index - self._first
        by_count = n / (self._fps or 30.0)
        ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self._cap is not None else 0.0
        t = ms / 1000.0 if ms > 0 or n == 0 else by_count
        if t <= self._previous:
            t = by_count if by_count > self._previous else self._previous + 1.0 / (self._fps or 30.0)
        self._previous = t
        return t

    def _frame_period(self) -> float:
        return 1.0 / (self._fps or 30.0)

    def _pass(self) -> Iterator[np.ndarray | None]:
        # A failed read is either one undecodable frame (FFmpeg goes on with the next) or the end of
        # the file; only a run of MAX_BAD_RUN failures is taken for the end. Failures followed by a
        # good frame are yielded as None, so the base class counts them as skipped.
        cap = self._cap
        failures = bad = good = 0
        while cap is not None and failures < MAX_BAD_RUN:
            ok, image = cap.read()
            if not ok or image is None:
                failures += 1
                continue
            if failures:
                if not bad:
                    log.warning("%s: frame %d cannot be decoded; skipping it (further ones are only counted)",
                                self.name, good + bad)
                bad += failures
                yield from [None] * failures
                failures = 0
            good += 1
            yield image
        if bad:
            log.warning("%s: %d frames read, %d undecodable frames skipped", self.name, good, bad)

    def _stop(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@SOURCES.register("video")
def video_source(settings: CameraSettings, target: str) -> VideoFileSource:
    return VideoFileSource(Path(target), settings.loop, realtime=bool(settings.realtime))
