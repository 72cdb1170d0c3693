"""The pipeline as the hub, with fakes at every seam: what goes in one end comes out the other, in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from edge.aggregate import Aggregator
from edge.geometry import Box, CropGeometry
from edge.messages import Envelope
from edge.pipeline import Pipeline
from edge.protocols import Classifier, Detection, EndOfStream, EventSink, FaceDetector, Frame, FrameSource, Message
from edge.settings import EventsSettings, TrackerSettings
from edge.tracker import Tracker

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FPS = 10.0


class ClipSource:
    """A recording of ``n`` frames at FPS, on its own timeline."""

    name = "clip"
    live = False
    stalled_for = 0.0
    reopens = 0

    def __init__(self, n: int, shape: tuple[int, int] = (120, 160)) -> None:
        self.n, self.shape, self.i = n, shape, 0
        self.dropped = 0
        self.skipped = 0

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Frame | None:
        if self.i >= self.n:
            raise EndOfStream
        frame = Frame(np.full((*self.shape, 3), 128, np.uint8), self.i, 0.0, t_media=self.i / FPS)
        self.i += 1
        return frame

    def close(self) -> None:
        pass


class ScriptedDetector:
    """One face, at a fixed box, on the frames listed."""

    name = "scripted"

    def __init__(self, present: Sequence[bool]) -> None:
        self.present, self.box, self.seen = list(present), Box(40, 30, 60, 60), 0

    def detect(self, frame: Frame) -> list[Detection]:
        self.seen += 1
        return [Detection(self.box, 0.9)] if self.present[frame.index] else []


class ScriptedClassifier:
    """Scores per frame from a script; records the crops it was asked for."""

    labels = LABELS
    backend = "cpu"
    runtime = "fake"
    last_infer_s: float | None = None

    def __init__(self, emotion_at: Sequence[str]) -> None:
        self.emotion_at, self.calls, self.crops = list(emotion_at), 0, []

    def classify(self, gray_frame: np.ndarray, crops: Sequence[Box]) -> np.ndarray:
        emotion = self.emotion_at[min(self.calls, len(self.emotion_at) - 1)]
        self.calls += 1
        self.crops.extend(crops)
        self.last_infer_s = 0.001
        out = np.full((len(crops), len(LABELS)), 0.02, np.float32)
        out[:, LABELS.index(emotion)] = 0.88
        return out

    def predict_tensors(self, faces: np.ndarray) -> np.ndarray:
        return np.full((len(faces), len(LABELS)), 1 / len(LABELS), np.float32)


class RecordingSink:
    name = "recording"
    on_closed = None

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def start(self) -> None:
        pass

    def publish(self, message: Message) -> None:
        self.messages.append(message)

    def status(self) -> Mapping[str, Any]:
        return {"received": len(self.messages)}

    def stop(self, timeout: float = 5.0) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [m.payload for m in self.messages if m.topic == "events" and isinstance(m.payload, dict)]


def make(n: int, present: Sequence[bool], emotions: Sequence[str], geometry: CropGeometry | None = None, **tracker: Any):
    source, detector, classifier, sink = ClipSource(n), ScriptedDetector(present), ScriptedClassifier(emotions), RecordingSink()
    aggregator = Aggregator(EventsSettings(window_s=2.0, stats_interval_s=60.0), LABELS, Envelope("test"), {"backend": "cpu"})
    tracker_settings = TrackerSettings(**({"smoothing_s": 0.0, "min_dwell_s": 0.5} | tracker))
    pipe = Pipeline(source, detector, classifier, Tracker(tracker_settings, LABELS), aggregator, [sink], geometry=geometry)
    return pipe, source, detector, classifier, sink


def test_the_fakes_honour_the_protocols():
    _, source, detector, classifier, sink = make(1, [True], ["happy"])
    assert isinstance(source, FrameSource) and isinstance(detector, FaceDetector)
    assert isinstance(classifier, Classifier) and isinstance(sink, EventSink)


def test_a_face_that_comes_and_goes_is_one_track_with_its_emotions_in_clip_time():
    emotions = ["happy"] * 20 + ["sad"] * 20
    pipe, *_, sink = make(50, [True] * 40 + [False] * 10, emotions, max_missed=2)
    pipe.run()
    events = sink.events()
    assert [e["type"] for e in events] == ["track_started", "emotion_changed", "track_ended"]
    assert events[0]["emotion"] == "happy" and (events[1]["from"], events[1]["to"]) == ("happy", "sad")
    assert events[2]["dominant"] == "happy" and events[2]["frames"] == 40
    # The change fires once the new emotion has led for min_dwell_s: 0.5 s after frame 20, i.e. at 2.5 s.
    assert events[1]["media_time_s"] == pytest.approx(2.5, abs=0.11)
    assert events[2]["media_time_s"] == pytest.approx(4.2, abs=0.11)  # the third pass without the face
    assert pipe.processed == 50


def test_windows_and_the_final_flush_cover_every_frame():
    pipe, *_, sink = make(45, [True] * 45, ["neutral"] * 45)
    pipe.run()
    states = [m.payload for m in sink.messages if m.topic == "state"]
    # The frame that reaches 2 s closes its window; the rest comes with the flush on shutdown.
    assert [s["frames"] for s in states] == [21, 20, 4]
    assert all(s["dominant"] == "neutral" for s in states)
    assert sum(s["face_frames"] for s in states) == 45


def test_the_detector_runs_every_nth_frame_and_tracks_carry_in_between():
    pipe, _, detector, classifier, sink = make(12, [True] * 12, ["happy"] * 12)
    pipe.detect_every = 3
    pipe.run()
    assert detector.seen == 4 and classifier.calls == 12
    assert [e["type"] for e in sink.events()] == ["track_started", "track_ended"]


def test_the_classifier_gets_the_geometry_s_square_of_each_box():
    geometry = CropGeometry(scale=1.2, dx=0.0, dy=-0.1)
    pipe, *_, classifier, _ = make(1, [True], ["happy"], geometry=geometry)
    pipe.run()
    ((_, y, side, side_h),) = classifier.crops
    assert side == side_h and side == pytest.approx(72, abs=1)  # 1.2 x the 60 px box
    assert y + side / 2 == pytest.approx(30 + 30 - 6, abs=1)  # centre moved up by a tenth of the box


def test_unusable_frames_are_counted_not_processed():
    pipe, *_ = make(3, [True] * 3, ["happy"] * 3)
    pipe.process(Frame(np.empty((0, 0, 3), np.uint8), 0, 0.0, t_media=0.0))
    assert pipe.skipped == 1 and pipe.processed == 0
