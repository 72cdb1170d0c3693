"""What every frame source shares: the registry, frame normalisation and the finite-source loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

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
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        elif np.issubdtype(image.dtype, np.floating):
            peak = float(np.nanmax(image, initial=0.0))
            scaled = image * 255.0 if peak <= 1.0 else image
            image = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
        elif image.dtype == np.bool_:
            image = image.astype(np.uint8) * 255
        elif np.issubdtype(image.dtype, np.integer):
            image = np.clip(image, 0, 255).astype(np.uint8)
        else:
            return None
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


class FiniteSource:
    """A source that is read as fast as it is consumed: a file, a folder, the demo clip.

    Subclasses provide ``_pass()``, a generator over one pass of raw frames
    (None for an item that cannot be read), plus ``_start()``/``_stop()``.
    Every raw frame counts in ``Frame.index``; unusable ones are counted as
    ``skipped``. At the end of a pass the source either raises ``EndOfStream``
    or, with ``loop``, starts again (unless a whole pass gave no usable frame).
    """

    live = False

    def __init__(self, name: str, loop: bool) -> None:
        self.name = name
        self.loop = loop
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
                self._restart()
                continue
            index = self._index
            self._index += 1
            image = normalise_image(raw) if raw is not None else None
            if image is None:
                self._skip(index, raw)
                continue
            self._good_in_pass += 1
            return Frame(image=image, index=index, t_capture=time.monotonic())

    @property
    def dropped(self) -> int:
        return 0

    @property
    def skipped(self) -> int:
        """Frames (or files) that could not be used and were passed over."""
        return self._skipped

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
