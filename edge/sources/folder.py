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

    Files that cannot be decoded are skipped with a warning and counted in ``skipped``.
    """

    def __init__(self, path: Path, loop: bool) -> None:
        super().__init__(f"folder {path}" if path.is_dir() else f"image {path}", loop)
        self.path = path
        self._files: list[Path] = []
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

    def _pass(self) -> Iterator[np.ndarray | None]:
        for path in self._files:
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
    return ImageFolderSource(Path(target), settings.loop)
