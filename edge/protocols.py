"""The seams of the pipeline: frame → faces → crops → scores → tracks → events → sinks.

Each seam is a ``Protocol``; backends register under a name in a small
registry so that settings pick them by name and optional dependencies are
imported only by the backend that needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from edge.geometry import Box


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the pip extra or apt package."""


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    ``image`` is BGR (HxWx3 uint8) for display-free processing and cropping;
    ``gray`` is a grayscale image for detection, possibly smaller than
    ``image`` (picamera2's lores Y plane), with ``gray_scale`` = image width /
    gray width so that detector boxes map back to ``image``.
    """

    image: np.ndarray
    index: int  # frames read from the source so far, dropped ones included
    t_capture: float  # time.monotonic() when the frame was grabbed
    gray: np.ndarray | None = None
    gray_scale: float = 1.0
    # Position in the recording (seconds from its start) for files and the demo clip; None for live sources.
    t_media: float | None = None
    # The photo this frame is, when each image is a scene of its own (an image folder); None otherwise.
    file: str | None = None

    @property
    def timestamp(self) -> float:
        """The frame's time on its own timeline: the position in the recording, else the capture time.

        Tracking, dwell times, durations and windows all run on it, so that a
        file gives the same events whether it plays at its native rate or as
        fast as the CPU allows.
        """
        return self.t_capture if self.t_media is None else self.t_media


@dataclass(frozen=True)
class Detection:
    box: Box  # in ``Frame.image`` pixels
    score: float = 1.0


@runtime_checkable
class FrameSource(Protocol):
    """Yields frames. A live source keeps only the newest frame and counts the rest as dropped."""

    name: str
    live: bool

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame | None:
        """Return the next frame, or None when none arrived within ``timeout`` seconds.

        Raises ``EndOfStream`` when a finite source is exhausted.
        """
        ...

    @property
    def dropped(self) -> int: ...

    @property
    def skipped(self) -> int:
        """Frames read but unusable (undecodable, odd shape) and passed over."""
        ...

    @property
    def reopens(self) -> int:
        """Times a live camera vanished and was opened again (0 for recordings): stats frames.reopens."""
        ...

    @property
    def stalled_for(self) -> float:
        """Seconds the current read has been blocked inside a driver (0 when none is): a wedged camera."""
        ...

    def close(self) -> None: ...


class EndOfStream(Exception):
    """A finite source (file, folder, demo clip) has no more frames."""


class SourceError(RuntimeError):
    """The source cannot be opened or read; the message says what to check."""


class CameraUnavailable(SourceError):
    """A well-formed source could not be opened at start (camera unplugged, stream down).

    Unlike a configuration error this may cure itself, so the daemon exits with
    EX_UNAVAILABLE (69), which systemd's Restart=on-failure retries.
    """


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, frame: Frame) -> list[Detection]: ...


@runtime_checkable
class Classifier(Protocol):
    labels: Sequence[str]
    backend: str  # where it runs: "cpu" or "edgetpu"
    runtime: str  # the TFLite runtime package, e.g. "ai-edge-litert"
    last_infer_s: float | None  # the model's own time per face in the last classify() (None before any face)

    def classify(self, gray_frame: np.ndarray, crops: Sequence[Box]) -> np.ndarray:
        """Return (len(crops), len(labels)) float32 probabilities for the faces' square crops
        (:func:`edge.preprocess.crop_square` of each detector box)."""
        ...

    def predict_tensors(self, faces: np.ndarray) -> np.ndarray:
        """Scores for face tensors (N, S, S, C) uint8 already cut and sized (the benchmark's plain crops)."""
        ...


@dataclass
class Message:
    """One outgoing message: ``topic`` is relative (events, state, stats, availability)."""

    topic: str
    payload: dict[str, Any] | str
    retain: bool = False
    qos: int = 0


@runtime_checkable
class EventSink(Protocol):
    name: str
    # Called once when the sink's reader is gone for good (stdout piped into `head`); None: nothing to tell.
    on_closed: Callable[[], None] | None

    def start(self) -> None: ...

    def publish(self, message: Message) -> None:
        """Hand a message over without blocking; the sink queues and delivers it."""
        ...

    def status(self) -> Mapping[str, Any]:
        """Counters and connection state for stats and ``check``."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``) and shut down cleanly."""
        ...


class ServiceNotifier(Protocol):
    """The service manager's view of the daemon (systemd's sd_notify: :class:`edge.notify.SystemdNotifier`)."""

    def ready(self) -> None:
        """Start-up is complete."""
        ...

    def status(self, text: str) -> None:
        """A one-line status (``systemctl status`` shows it)."""
        ...

    def watchdog(self) -> bool:
        """Called every frame; the notifier decides how often it actually pings (True when it did)."""
        ...

    def stopping(self) -> None:
        """Shutdown has begun."""
        ...


T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """Name → factory. Factories import their optional dependencies themselves."""

    kind: str
    factories: dict[str, Callable[..., T]] = field(default_factory=dict)

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self.factories[name] = factory
            return factory

        return deco

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        try:
            factory = self.factories[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self.factories))}") from None
        return factory(*args, **kwargs)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.factories))
