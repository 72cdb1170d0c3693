"""Frame sources, picked by ``camera.source``.

``open_source(settings)`` parses the setting and builds the source; the
caller then calls ``open()`` (or uses it as a context manager), which is
where a missing camera or undecodable file is reported as ``SourceError``.

Forms of ``camera.source``:

- ``demo``: a generated clip of a real face (:mod:`edge.demo`); finite unless ``loop``.
- ``csi`` / ``csi:N``: a Raspberry Pi camera through picamera2 (live).
- ``usb:N``, ``N``, ``/dev/videoN``, ``/dev/v4l/by-id/…``: a V4L2 camera (live).
- ``rtsp://…``, ``rtsps://…``, ``rtmp://…``, ``http(s)://…``: a network stream (live).
- a video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, …): every frame in order; finite unless ``loop``.
- a folder of images (or one image): in name order; finite unless ``loop``.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge.protocols import FrameSource, SourceError
from edge.settings import CameraSettings
from edge.sources.base import ACCEPTED_FORMS, SOURCES, FiniteSource, normalise_image
from edge.sources.demo import DemoSource
from edge.sources.folder import IMAGE_SUFFIXES, ImageFolderSource
from edge.sources.live import Camera, Grab, LiveCapture, Opener
from edge.sources.opencv import CvCamera, StreamSource, V4L2Source, VideoFileSource, open_stream, open_v4l2, redact_url
from edge.sources.picamera import PiCamera, PiCameraSource

VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".m2ts",
    ".3gp", ".ogv", ".mjpeg", ".mjpg", ".h264", ".264", ".h265", ".hevc", ".gif",
})
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")

__all__ = [
    "ACCEPTED_FORMS", "SOURCES", "Camera", "CvCamera", "DemoSource", "FiniteSource", "Grab", "ImageFolderSource",
    "LiveCapture", "Opener", "PiCamera", "PiCameraSource", "StreamSource", "V4L2Source", "VideoFileSource",
    "normalise_image", "open_source", "open_stream", "open_v4l2", "parse_source", "redact_url",
]


def _bad(spec: str, problem: str) -> SourceError:
    return SourceError(f"camera.source = {redact_url(spec)!r}: {problem}; use one of: {ACCEPTED_FORMS}")


def parse_source(spec: str) -> tuple[str, str]:
    """Split ``camera.source`` into a registry name and its target (device, URL or path)."""
    text = spec.strip()
    lower = text.lower()
    if not text:
        raise _bad(spec, "it is empty")
    if lower == "demo":
        return "demo", ""
    if m := re.fullmatch(r"csi(?::(\d+))?", lower):
        return "csi", m.group(1) or "0"
    if m := re.fullmatch(r"(?:usb:)?(\d+)", lower):
        return "v4l2", m.group(1)
    if lower.startswith("usb:"):
        raise _bad(spec, "usb: takes a camera number, e.g. usb:0")
    if m := re.match(r"([a-z][a-z0-9+.-]*)://", lower):
        if m.group(1) in STREAM_SCHEMES:
            return "stream", text
        raise _bad(spec, f"unknown URL scheme {m.group(1)!r} (streams: {', '.join(s + '://' for s in STREAM_SCHEMES)})")
    if text.startswith("/dev/"):
        return "v4l2", text  # existence and permissions are checked when the camera is opened
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", str(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return "video", str(path)
        if suffix in IMAGE_SUFFIXES:
            return "folder", str(path)
        raise _bad(spec, f"file type {suffix or '(none)'!r} is not a known video ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                         "or image type")
    if path.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES or "/" in text or "\\" in text:
        raise _bad(spec, f"{path} does not exist")
    raise _bad(spec, "not a known source name, device, URL or existing path")


def open_source(settings: CameraSettings) -> FrameSource:
    """Build the source ``settings.source`` names (not yet opened: call ``open()``)."""
    kind, target = parse_source(settings.source)
    return SOURCES.create(kind, settings, target)
