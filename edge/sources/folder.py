"""A folder of still images, read in name order."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge.protocols import SourceError
from edge.settings import CameraSettings
from edge.sources.base import SOURCES, FiniteSource

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2"})


class ImageFolderSource(FiniteSource):
    """Images of a folder (not its subfolders), sorted by name; a single image file works too.

    By default each image is a photo of its own: every frame names its file and
    no track spans two images. With ``sequence`` the images are the frames of
    one time-lapse, ``fps`` apart. Files that cannot be decoded are skipped with
    a warning and counted in ``skipped``.
    """

    def __init__(self, path: Path, loop: bool, sequence: bool = False, fps: float = 15.0, realtime: bool = False) -> None:
        super().__init__(f"folder {path}" if path.is_dir() else f"image {path}", loop, realtime)
        self.path = path
        self.sequence = sequence
        self._period = 1.0 / fps
        self._files: list[Path] = []
        self._current: Path | None = None
        self._first = 0
        self._reported: set[Path] = set()  # warn once per bad file, not once per loop

    def _start(self) -> None:
        if self.path.is_file():
            self._files = [self.path]
        elif self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir()
                                 if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        else:
            raise SourceError(f"camera.source: {self.path} does not exist")
        if not self._files:
            raise SourceError(f"camera.source: folder {self.path} holds no images "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or point camera.source elsewhere")
        self._first = self._index

    def _position(self, index: int) -> float | None:
        return (index - self._first) * self._period if self.sequence else None

    def _file(self) -> str | None:
        return None if self.sequence or self._current is None else self._current.name

    def _frame_period(self) -> float:
        return self._period

    def _pass(self) -> Iterator[np.ndarray | None]:
        for path in self._files:
            self._current = path
            # IMREAD_COLOR also applies EXIF orientation and turns gray, 16-bit and alpha images into 8-bit BGR.
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None and path not in self._reported:
                self._reported.add(path)
                log.warning("%s: cannot decode %s; skipping it", self.name, path.name)
            yield image

    def _describe_skip(self, index: int) -> str:
        return f"image {index}"


@SOURCES.register("folder")
def folder_source(settings: CameraSettings, target: str) -> ImageFolderSource:
    return ImageFolderSource(Path(target), settings.loop, sequence=settings.sequence, fps=settings.fps,
                             realtime=bool(settings.realtime))
