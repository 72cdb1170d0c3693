"""``camera.source = "demo"``: the generated clip of :mod:`edge.demo`, no camera needed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edge.demo import DemoClip
from edge.settings import CameraSettings
from edge.sources.base import SOURCES, FiniteSource


class DemoSource(FiniteSource):
    """``demo_frames`` generated frames of ``width`` x ``height``; ends, or loops with ``loop``."""

    def __init__(self, frames: int = 240, width: int = 640, height: int = 480, loop: bool = False) -> None:
        super().__init__("demo", loop)
        self._size = (frames, width, height)
        self.clip: DemoClip | None = None

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
    return DemoSource(settings.demo_frames, settings.width, settings.height, settings.loop)
