"""``camera.source = "demo"``: the generated clip of :mod:`edge.demo`, no camera needed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edge.demo import DemoClip
from edge.settings import CameraSettings
from edge.sources.base import SOURCES, FiniteSource


class DemoSource(FiniteSource):
    """``demo_frames`` generated frames of ``width`` x ``height``, ``fps`` apart; ends, or loops with ``loop``.

    With ``realtime`` the clip plays at that rate, as a camera would, so a first
    run shows state windows and stats arriving in real time; without, it plays
    as fast as it is processed (benchmarks), on the same timeline.
    """

    def __init__(self, frames: int = 240, width: int = 640, height: int = 480, loop: bool = False,
                 fps: float = 15.0, realtime: bool = False) -> None:
        super().__init__("demo", loop, realtime)
        self._size = (frames, width, height)
        self._period = 1.0 / fps
        self._first = 0
        self.clip: DemoClip | None = None

    def _position(self, index: int) -> float | None:
        return (index - self._first) * self._period

    def _frame_period(self) -> float:
        return self._period

    def _start(self) -> None:
        self._first = self._index
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
    # A demo stands in for a camera: it plays in real time unless camera.realtime says otherwise.
    realtime = True if settings.realtime is None else settings.realtime
    return DemoSource(settings.demo_frames, settings.width, settings.height, settings.loop, settings.fps, realtime)
