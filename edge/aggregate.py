"""From tracks to messages: events per track change, a state summary per window, periodic stats.

Windows and stats intervals run on the frames' own timeline (``Frame.timestamp``):
a recording's position, or a live camera's capture clock, so a file gives the
same windows at its native rate and at file speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from edge.messages import Envelope
from edge.metrics import Metrics
from edge.protocols import Frame, Message
from edge.settings import EventsSettings
from edge.sinks import wire
from edge.tracker import Track, TrackEvent


class Aggregator:
    """Turns tracker output into ``events``, ``state`` and ``stats`` messages."""

    def __init__(
        self,
        settings: EventsSettings,
        labels: Sequence[str],
        envelope: Envelope,
        info: Mapping[str, Any],
        event_qos: int = 1,
        status_provider: Callable[[], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.labels = tuple(labels)
        self.envelope = envelope
        self.info = dict(info)  # backend, model, source: static parts of stats
        self.event_qos = event_qos
        self.clock = clock
        self.status_provider = status_provider  # sink counters for stats
        self.metrics = metrics or Metrics()  # the pipeline's own measurements (latencies, faces in view), for stats
        self.started = clock()  # uptime is wall time, whatever the frames' timeline
        # Start of the current window and stats interval on the frames' timeline; set by the first frame.
        self._window_start: float | None = None
        self._stats_start: float | None = None
        self._reset_window()
        self._frames_in_total = 0
        self._processed_total = 0
        self._dropped_total = 0
        self._skipped_total = 0  # unusable frames the source or the pipeline passed over
        self._reopens_total = 0  # a live camera lost and opened again
        self._stats_marks = (0, 0, 0)

    def _reset_window(self) -> None:
        n = len(self.labels)
        self._w_frames = 0
        self._w_face_frames = 0
        self._w_emotion_counts = np.zeros(n)
        self._w_score_sum = np.zeros(n)

    # -- per frame ---------------------------------------------------------------

    def on_frame(
        self, frame: Frame, tracks: Sequence[Track], events: Iterable[TrackEvent], dropped: int, skipped: int = 0,
        reopens: int = 0,
    ) -> list[Message]:
        """Account for one processed frame; returns the messages due now."""
        if self._window_start is None or self._stats_start is None:
            self._window_start = self._stats_start = frame.timestamp
        self._frames_in_total = frame.index + 1
        self._dropped_total = dropped
        self._skipped_total = skipped
        self._reopens_total = reopens
        self._processed_total += 1
        self._w_frames += 1
        for t in tracks:
            if t.missed == 0:  # a track kept alive through missed detections is not a face in view
                self._w_face_frames += 1
                self._w_emotion_counts[t.emotion] += 1
                self._w_score_sum += t.scores
        out = [self.event_message(e, frame) for e in events]
        out.extend(self.due(frame.timestamp))
        return out

    def due(self, now: float) -> list[Message]:
        """State and stats messages whose interval has passed (also called while no frames arrive)."""
        if self._window_start is None or self._stats_start is None:
            self._window_start = self._stats_start = now
        out = []
        if now - self._window_start >= self.settings.window_s:
            out.append(self.state_message(now))
        if now - self._stats_start >= self.settings.stats_interval_s:
            out.append(self.stats_message(now))
        return out

    def ended(self, events: Iterable[TrackEvent], frame: Frame) -> list[Message]:
        """Tracks ended outside a frame's own update (a photo's faces, once the next photo comes)."""
        return [self.event_message(e, frame) for e in events]

    def flush(self, final_events: Iterable[TrackEvent], last: Frame | None = None) -> list[Message]:
        """Shutdown: the ended tracks, then the partial window and last stats, so nothing is lost."""
        now = last.timestamp if last is not None else self.clock()
        out = [self.event_message(e, last) for e in final_events]
        out.append(self.state_message(now))
        out.append(self.stats_message(now))
        return out

    # -- payloads ----------------------------------------------------------------

    def event_message(self, event: TrackEvent, frame: Frame | None = None) -> Message:
        t = event.track
        body: dict[str, Any] = {"type": event.type, "track_id": t.track_id, "box": list(map(int, t.box)), **event.data}
        if frame is not None and frame.t_media is not None:
            body["media_time_s"] = round(event.at, 3)  # where in the recording it happened
        if frame is not None and frame.file is not None:
            body["file"] = frame.file
        return self.envelope.message(wire.EVENTS, body, qos=self.event_qos)

    def state_message(self, now: float) -> Message:
        start = now if self._window_start is None else self._window_start
        counts = self._w_emotion_counts
        total = counts.sum()
        shares = counts / total if total else np.zeros(len(self.labels))
        means = self._w_score_sum / self._w_face_frames if self._w_face_frames else np.zeros(len(self.labels))
        body = {
            "faces": self.metrics.faces_now,
            "dominant": self.labels[int(np.argmax(counts))] if total else None,
            "shares": {k: round(float(v), 4) for k, v in zip(self.labels, shares)},
            "mean_scores": {k: round(float(v), 4) for k, v in zip(self.labels, means)},
            "frames": self._w_frames,
            "face_frames": self._w_face_frames,
            "window_s": round(now - start, 3),
        }
        self._window_start = now
        self._reset_window()
        return self.envelope.message(wire.STATE, body)

    def stats_message(self, now: float) -> Message:
        span = max(now - (now if self._stats_start is None else self._stats_start), 1e-9)
        f_in, f_done, f_drop = self._stats_marks
        body = {
            "fps": {
                "in": round((self._frames_in_total - f_in) / span, 2),
                "processed": round((self._processed_total - f_done) / span, 2),
                "dropped": round((self._dropped_total - f_drop) / span, 2),
            },
            "frames": {
                "in": self._frames_in_total, "processed": self._processed_total, "dropped": self._dropped_total,
                "skipped": self._skipped_total, "reopens": self._reopens_total,
            },
            "latency_ms": self.metrics.latency_ms(),
            "faces": self.metrics.faces_now,
            "uptime_s": round(self.clock() - self.started, 1),
            **self.info,
        }
        if self.status_provider is not None:
            body["sinks"] = dict(self.status_provider())
        self._stats_marks = (self._frames_in_total, self._processed_total, self._dropped_total)
        self._stats_start = now
        return self.envelope.message(wire.STATS, body)
