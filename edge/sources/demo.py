"""``camera.source = "demo"``: the generated clip of :mod:`edge.demo`, no camera needed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from edge.demo import DemoClip
from edge.settings import CameraSettings
from edge.protocols import Frame
from edge.sources.base import SOURCES, FiniteSource


class DemoSource(FiniteSource):
    """``demo_frames`` generated frames of ``width`` x ``height``; ends, or loops with ``loop``.

    With ``fps`` the clip plays at that rate, as a camera would, so a first run
    shows state windows and stats arriving in real time; ``fps=0`` plays it as
    fast as it is processed (benchmarks).
    """

    def __init__(self, frames: int = 240, width: int = 640, height: int = 480, loop: bool = False, fps: float = 0.0) -> None:
        super().__init__("demo", loop)
        self._size = (frames, width, height)
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._due = 0.0
        self.clip: DemoClip | None = None

    def read(self, timeout: float = 0.0) -> Frame | None:
        if self._period:
            now = time.monotonic()
            if self._due > now + timeout:
                time.sleep(timeout)
                return None
            if self._due > now:
                time.sleep(self._due - now)
            self._due = max(self._due, now) + self._period
        return super().read(timeout)

    def _start(self) -> None:
        if self.clip is None:
            frames, width, height = self._size
            self.clip = DemoClip(frames, width, height)

    def _pass(self) -> Iterator[np.ndarray | None]:
        clip = self.clip
        assert clip is not None
        for i in range(clip.frames):
            yield clip.frame(i)


@SOURCES.register("demo")
def demo_source(settings: CameraSettings, target: str = "") -> DemoSource:
    return DemoSource(
        settings.demo_frames, settings.width, settings.height, settings.loop, settings.fps if settings.demo_realtime else 0.0
    )
