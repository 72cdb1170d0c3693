"""Live capture: a thread that keeps only the newest frame and reopens a vanished camera.

The pipeline must never wait on a camera and never work through a backlog:
a capture thread reads the device as fast as it delivers, keeps one frame in
a one-slot buffer, and counts every frame it overwrites before the consumer
took it as ``dropped``. When the device stops delivering (unplugged, stream
gone), the thread closes it and reopens it with exponential backoff, logging
one warning per attempt, until it is back or the source is closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge.protocols import Frame, MissingExtra, SourceError
from edge.sources.base import normalise_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grab:
    """One raw frame from a device; ``gray``/``gray_scale`` as in ``Frame`` (CSI lores plane)."""

    image: np.ndarray
    gray: np.ndarray | None = None
    gray_scale: float = 1.0


class Camera(Protocol):
    """An opened device."""

    def read(self) -> Grab | None:
        """Block until the next frame; None when the device failed to deliver one."""
        ...

    def release(self) -> None: ...


Opener = Callable[[], Camera]
"""Opens the device; raises (SourceError with a hint, ideally) when it cannot."""


class LiveCapture:
    """A live ``FrameSource`` around any ``Opener``.

    ``read(timeout)`` returns the newest frame not yet returned, or None when
    none arrived within ``timeout``. ``open()`` opens the device once in the
    caller's thread so that a camera missing at start is a ``SourceError``;
    later failures are handled in the capture thread and never raise.
    """

    live = True

    def __init__(
        self,
        name: str,
        opener: Opener,
        *,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_read_failures: int = 3,
        hint: str = "",
    ) -> None:
        self.name = name
        self._opener = opener
        self._read_started: float | None = None
        self._backoff_s = backoff_s
        self._backoff_max_s = max(backoff_max_s, backoff_s)
        # A stream can miss a frame now and then without being gone; a few failures in a row mean it is.
        self._max_read_failures = max(1, max_read_failures)
        self._hint = hint
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slot: Frame | None = None
        self._grabbed = 0
        self._dropped = 0
        self._skipped = 0
        self._reopens = 0
        self._connected = False
        self._warned_odd = False

    # FrameSource ---------------------------------------------------------------------
    def open(self) -> None:
        if self._thread is not None:
            return
        camera = self._open_first()
        # A fresh event per run: a capture thread from an earlier open() that is still stuck in a driver
        # call must not be revived by this one.
        self._stop = threading.Event()
        self._connected = True
        self._thread = threading.Thread(target=self._run, args=(camera, self._stop), name=f"capture {self.name}", daemon=True)
        self._thread.start()

    def read(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._slot is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            return frame

    @property
    def dropped(self) -> int:
        """Frames overwritten by a newer one before they were read."""
        return self._dropped

    def close(self, timeout: float = 3.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._thread = None
            self._slot = None
            self._cond.notify_all()
        thread.join(timeout)
        if thread.is_alive():
            # A driver blocked inside read(); the daemon thread releases the device once it returns.
            log.warning("%s: capture thread did not stop within %.1f s; leaving it to finish on its own", self.name, timeout)

    @property
    def skipped(self) -> int:
        """Frames the device delivered in a form that could not be used (empty, odd shape)."""
        return self._skipped

    @property
    def reopens(self) -> int:
        """Times the device vanished and was opened again."""
        return self._reopens

    @property
    def connected(self) -> bool:
        """False while the device is gone and being reopened."""
        return self._connected

    def __enter__(self) -> LiveCapture:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stalled_for(self) -> float:
        """Seconds the device's current read has been blocked (0 when none is under way).

        A driver that never returns from a read (seen with picamera2) starves the
        pipeline without an error; the daemon stops feeding systemd's watchdog
        once this grows, so the service is restarted.
        """
        started = self._read_started
        return 0.0 if started is None else time.monotonic() - started

    # Capture thread ------------------------------------------------------------------
    def _open_first(self) -> Camera:
        try:
            return self._opener()
        except (SourceError, MissingExtra):
            raise
        except Exception as exc:  # drivers raise anything; the person needs the device and the hint
            message = f"cannot open {self.name}: {exc}"
            raise SourceError(f"{message}; {self._hint}" if self._hint else message) from exc

    def _run(self, camera: Camera | None, stop: threading.Event) -> None:
        failures = 0
        delay = self._backoff_s
        try:
            while not stop.is_set():
                if camera is None:
                    camera, delay = self._reopen(stop, delay)
                    continue
                self._read_started = time.monotonic()
                try:
                    grab = camera.read()
                except Exception as exc:  # a driver error is a failed read, never the end of the daemon
                    log.debug("%s: read raised %r", self.name, exc)
                    grab = None
                finally:
                    self._read_started = None
                if stop.is_set():
                    break
                if grab is None:
                    failures += 1
                    if failures >= self._max_read_failures:
                        log.warning("%s: camera stopped delivering frames; reopening it in %.2f s", self.name, delay)
                        self._connected = False
                        _release(camera, self.name)
                        camera = None
                        failures = 0
                    continue
                failures = 0
                # Only a delivered frame proves the camera works: one that opens and then fails keeps backing off.
                delay = self._backoff_s
                self._deliver(grab)
        finally:
            if camera is not None:
                _release(camera, self.name)

    def _reopen(self, stop: threading.Event, delay: float) -> tuple[Camera | None, float]:
        """Wait ``delay``, try to open, double the delay after each failure; returns the camera and the next delay."""
        attempt = 0
        while not stop.wait(delay):
            attempt += 1
            delay = min(delay * 2.0, self._backoff_max_s)
            try:
                camera = self._opener()
            except Exception as exc:
                log.warning("%s: reopen attempt %d failed (%s); next attempt in %.2f s", self.name, attempt, exc, delay)
                continue
            if stop.is_set():
                _release(camera, self.name)
                break
            self._reopens += 1
            self._connected = True
            log.info("%s: camera is back after %d attempt(s)", self.name, attempt)
            return camera, delay
        return None, delay

    def _deliver(self, grab: Grab) -> None:
        index = self._grabbed
        self._grabbed += 1
        image = normalise_image(grab.image)
        if image is None:
            self._skipped += 1
            if not self._warned_odd:
                shape = getattr(grab.image, "shape", None)
                dtype = getattr(grab.image, "dtype", type(grab.image).__name__)
                log.warning("%s: skipping a frame with unusable shape %s / %s (further ones are only counted)",
                            self.name, shape, dtype)
                self._warned_odd = True
            return
        gray, gray_scale = grab.gray, grab.gray_scale
        if gray is not None and (gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0):
            gray, gray_scale = None, 1.0
        frame = Frame(image=image, index=index, t_capture=time.monotonic(), gray=gray, gray_scale=gray_scale)
        with self._cond:
            if self._slot is not None:
                self._dropped += 1
            self._slot = frame
            self._cond.notify()


def _release(camera: Camera, name: str) -> None:
    try:
        camera.release()
    except Exception as exc:  # the device is going away anyway
        log.debug("%s: release failed: %r", name, exc)
