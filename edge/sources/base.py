"""What every frame source shares: the registry, frame normalisation and the finite-source loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from edge.preprocess import to_uint8
from edge.protocols import EndOfStream, Frame, FrameSource, Registry, SourceError

log = logging.getLogger(__name__)

SOURCES: Registry[FrameSource] = Registry("frame source")

ACCEPTED_FORMS = (
    "'demo', 'csi' (or 'csi:N'), 'usb:N', /dev/videoN, a camera number N, an rtsp://, rtmp://, http:// or https:// "
    "stream URL, a video file (.mp4, .avi, .mov, .mkv, …) or a folder of images"
)


def normalise_image(image: Any) -> np.ndarray | None:
    """Return ``image`` as a C-contiguous BGR uint8 HxWx3 array, or None when it cannot be one.

    Decoders and drivers hand over gray, BGRA, 16-bit, float or empty frames
    now and then; the pipeline only ever sees BGR uint8.
    """
    if not isinstance(image, np.ndarray) or image.size == 0 or image.ndim not in (2, 3):
        return None
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        return None
    image = to_uint8(image)
    if image is None:
        return None
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


class FiniteSource:
    """A recording: a file, a folder, the demo clip; read as fast as it is consumed, or at its own rate.

    Subclasses provide ``_pass()``, a generator over one pass of raw frames
    (None for an item that cannot be read), plus ``_start()``/``_stop()``, and
    ``_position()``: the position in the recording of the frame just yielded
    (seconds; None where the recording has no timeline, such as a set of photos)
    and ``_file()``: the photo it is, where each image is its own scene.
    Every raw frame counts in ``Frame.index``; unusable ones are counted as
    ``skipped``. At the end of a pass the source either raises ``EndOfStream``
    or, with ``loop``, starts again (unless a whole pass gave no usable frame);
    positions go on rising across passes.

    With ``realtime`` frames are handed over at the pace of their positions,
    like a camera's; a consumer that falls behind by more than ``LAG_S`` gets
    the frames it missed skipped and counted as ``dropped``, as a camera does.
    """

    live = False
    LAG_S = 0.2  # behind the recording's own pace by this much, frames are dropped to catch up

    def __init__(self, name: str, loop: bool, realtime: bool = False) -> None:
        self.name = name
        self.loop = loop
        self.realtime = realtime
        self._pace_origin: float | None = None  # monotonic time of position 0 when realtime
        self._dropped = 0
        self._pass_offset = 0.0  # positions of earlier passes (loop)
        self._last_position = 0.0
        self._frames: Iterator[np.ndarray | None] | None = None
        self._index = 0
        self._skipped = 0
        self._good_in_pass = 0
        self._warned_odd = False

    # Subclass hooks -----------------------------------------------------------------
    def _start(self) -> None:
        """Acquire what the source needs; raise SourceError with a fix when it cannot."""

    def _pass(self) -> Iterator[np.ndarray | None]:
        raise NotImplementedError

    def _stop(self) -> None:
        """Release what ``_start`` acquired."""

    def _describe_skip(self, index: int) -> str:
        return f"frame {index}"

    def _position(self, index: int) -> float | None:
        """Position in this pass of the frame just yielded (seconds), or None: no timeline."""
        return None

    def _file(self) -> str | None:
        """The photo just yielded, when every image is a scene of its own; None otherwise."""
        return None

    def _frame_period(self) -> float:
        """The recording's frame interval (seconds), for the gap between passes of a loop."""
        return 0.0

    # FrameSource ---------------------------------------------------------------------
    def open(self) -> None:
        if self._frames is not None:
            return
        self._start()
        self._frames = self._pass()
        self._good_in_pass = 0

    def read(self, timeout: float = 0.0) -> Frame | None:
        """Return the next usable frame; ``timeout`` does not apply (reads never wait on a device)."""
        if self._frames is None:
            raise SourceError(f"frame source {self.name} is not open; call open() first")
        while True:
            try:
                raw = next(self._frames)
            except StopIteration:
                if not self.loop or self._good_in_pass == 0:
                    raise EndOfStream(self.name) from None
                self._pass_offset = self._last_position + self._frame_period()
                self._restart()
                continue
            index = self._index
            self._index += 1
            position = self._position(index)
            t_media = None if position is None else self._pass_offset + position
            if t_media is not None:
                self._last_position = t_media
                if self.realtime and not self._pace(t_media):
                    self._dropped += 1
                    continue
            image = normalise_image(raw) if raw is not None else None
            if image is None:
                self._skip(index, raw)
                continue
            self._good_in_pass += 1
            return Frame(image=image, index=index, t_capture=time.monotonic(), t_media=t_media, file=self._file())

    def _pace(self, t_media: float) -> bool:
        """Wait until the frame at ``t_media`` is due; False when it is already too late (drop it)."""
        now = time.monotonic()
        if self._pace_origin is None:
            self._pace_origin = now - t_media
        due = self._pace_origin + t_media
        if now > due + self.LAG_S:
            return False
        if due > now:
            time.sleep(due - now)
        return True

    @property
    def dropped(self) -> int:
        """Frames skipped to keep up with the recording's own pace (``realtime`` only)."""
        return self._dropped

    @property
    def stalled_for(self) -> float:
        """A recording is read in the loop's own thread: it cannot wedge the way a camera driver can."""
        return 0.0

    @property
    def skipped(self) -> int:
        """Frames (or files) that could not be used and were passed over."""
        return self._skipped

    @property
    def reopens(self) -> int:
        """A recording is opened once; looping it is not losing it."""
        return 0

    def close(self) -> None:
        if self._frames is not None:
            self._frames = None
            self._stop()

    def __enter__(self) -> FiniteSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Internals -----------------------------------------------------------------------
    def _restart(self) -> None:
        self._stop()
        self._start()
        self._frames = self._pass()
        self._good_in_pass = 0

    def _skip(self, index: int, raw: Any) -> None:
        self._skipped += 1
        if raw is None:
            return  # the subclass has already said why (e.g. an unreadable file)
        if not self._warned_odd:
            shape = getattr(raw, "shape", None)
            dtype = getattr(raw, "dtype", type(raw).__name__)
            log.warning("%s: skipping %s with unusable shape %s / %s (further ones are only counted)",
                        self.name, self._describe_skip(index), shape, dtype)
            self._warned_odd = True
