"""The daemon's loop: frame → faces → crops → scores → tracks → events → sinks.

One thread does the work; capture runs on the source's own thread (live
sources) and delivery on the sinks' threads, so neither a slow camera nor a
missing broker can stall inference.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edge.aggregate import Aggregator
from edge.metrics import Metrics
from edge.preprocess import DEFAULT_CROP_MARGIN, Box, CropGeometry, crop_square, to_gray
from edge.protocols import Classifier, EndOfStream, EventSink, FaceDetector, Frame, FrameSource, Message
from edge.tracker import Track, Tracker

log = logging.getLogger(__name__)


def sinks_status(sinks: Sequence[EventSink]) -> dict[str, Any]:
    """Each sink's counters and connection state, by name: for stats, the status line and check."""
    return {sink.name: dict(sink.status()) for sink in sinks}


class Pipeline:
    def __init__(
        self,
        source: FrameSource,
        detector: FaceDetector,
        classifier: Classifier,
        tracker: Tracker,
        aggregator: Aggregator,
        sinks: Sequence[EventSink],
        detect_every: int = 1,
        geometry: CropGeometry | None = None,
        heartbeat: Callable[[Mapping[str, Any]], None] | None = None,
        frame_hook: Callable[[Frame, Sequence[Track]], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.source = source
        self.detector = detector
        self.classifier = classifier
        self.tracker = tracker
        self.aggregator = aggregator
        self.sinks = list(sinks)
        self.detect_every = max(1, detect_every)
        # Detector box -> the square the model was trained on (measured per detector; the bundle holds it).
        self.geometry = geometry or CropGeometry.from_margin(DEFAULT_CROP_MARGIN)
        self.heartbeat = heartbeat  # watchdog + status line, called from this loop so a stuck loop is noticed
        self.metrics = metrics or aggregator.metrics
        self.frame_hook = frame_hook  # sees every processed frame with its tracks (analyze: per-frame rows, drawing)
        self.stop_event = threading.Event()
        self.processed = 0
        self.detections = 0  # frames on which the detector ran
        self.detections_with_faces = 0
        self.skipped = 0
        self._last_shape: tuple[int, ...] = ()
        self._last_frame: Frame | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            for sink in self.sinks:
                sink.publish(message)

    def sink_status(self) -> dict[str, Any]:
        return sinks_status(self.sinks)

    def status(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "faces": self.metrics.faces_now,
            "dropped": self.source.dropped,
            "sinks": self.sink_status(),
        }

    def _classify(self, gray: np.ndarray, boxes: list[Box]) -> np.ndarray:
        if not boxes:
            return np.empty((0, len(self.tracker.labels)), np.float32)
        return self.classifier.classify(gray, [crop_square(b, self.geometry) for b in boxes])

    def process(self, frame: Frame) -> None:
        """Run one frame through detection, classification, tracking and aggregation."""
        m = self.metrics
        image = frame.image
        if image is None or image.size == 0 or image.ndim not in (2, 3):
            self.skipped += 1
            return
        m.add("capture", max(0.0, time.monotonic() - frame.t_capture))
        with m.stage("total"):
            gray = to_gray(image)
            if frame.gray is None:
                # Detection reuses this conversion instead of making its own.
                frame = dataclasses.replace(frame, gray=gray, gray_scale=1.0)
            now = frame.timestamp
            previous, self._last_frame = self._last_frame, frame
            if frame.file is not None and previous is not None and previous.file != frame.file and self.tracker.tracks:
                # A new photo is a new scene: the faces of the last one are gone, not missed.
                self.publish(self.aggregator.ended(self.tracker.end_all(previous.timestamp), previous))
            carried = self.tracker.carried()
            # A new frame size (a reopened camera, a folder of mixed images) invalidates the carried boxes.
            detect = self.processed % self.detect_every == 0 or not carried or gray.shape != self._last_shape
            self._last_shape = gray.shape
            if detect:
                with m.stage("detect"):
                    boxes = [d.box for d in self.detector.detect(frame)]
                self.detections += 1
                self.detections_with_faces += bool(boxes)
            else:
                boxes = [t.box for t in carried]
            with m.stage("classify"):
                scores = self._classify(gray, boxes)
            if boxes and self.classifier.last_infer_s is not None:
                m.add("infer", self.classifier.last_infer_s)
            with m.stage("publish"):
                events = self.tracker.update(boxes, scores, now) if detect else self.tracker.carry(carried, scores, now)
                self.processed += 1
                messages = self.aggregator.on_frame(
                    frame, self.tracker.tracks, events, self.source.dropped, self.source.skipped + self.skipped,
                    self.source.reopens,
                )
                m.faces_now = len(self.tracker.carried())
                self.publish(messages)
                if self.frame_hook is not None:
                    self.frame_hook(frame, self.tracker.carried())

    def idle(self) -> None:
        """No frame within the read timeout (camera gone or stalled): age the tracks as an empty pass."""
        now = time.monotonic()  # only live sources go quiet, and their timeline is the capture clock
        events = self.tracker.update([], np.empty((0, len(self.tracker.labels)), np.float32), now) if self.tracker.tracks else []
        messages = [self.aggregator.event_message(e) for e in events]
        self.metrics.faces_now = len(self.tracker.carried())
        self.publish(messages + self.aggregator.due(now))

    def run(self, max_frames: int = 0) -> None:
        """Process frames until stopped, the source ends, or ``max_frames`` are done; then flush."""
        try:
            while not self.stop_event.is_set():
                try:
                    frame = self.source.read(timeout=0.5)
                except EndOfStream:
                    log.info("source %s ended after %d frames", self.source.name, self.processed)
                    break
                if frame is not None:
                    self.process(frame)
                else:
                    self.idle()
                if self.heartbeat is not None:
                    self.heartbeat(self.status())
                if max_frames and self.processed >= max_frames:
                    break
        finally:
            last = self._last_frame
            end = last.timestamp if last is not None else time.monotonic()
            self.metrics.faces_now = 0
            self.publish(self.aggregator.flush(self.tracker.end_all(end), last))
