"""Face tracks: stable ids across frames, smoothed scores, emotion with hysteresis.

Time, not frames, defines both the smoothing (an exponential moving average
with time constant ``smoothing_s``) and the dwell (a new emotion must lead for
``min_dwell_s`` before the track changes to it), so a clip gives the same
emotions at 5, 15 or 30 fps and at file speed. ``now`` is the frame's own
timestamp (its position in a recording, or its capture time).

A greedy IoU match is enough here: a shelf camera sees a handful of faces that
move little between frames, and the greedy match is exact whenever faces do not
overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.geometry import Box, iou
from edge.settings import TrackerSettings

log = logging.getLogger(__name__)


def ema(average: np.ndarray, new: np.ndarray, dt: float, tau: float) -> np.ndarray:
    """One step of an exponential moving average in time: after ``dt`` seconds the old average keeps
    exp(-dt / tau) of its weight, whatever the frame rate (``tau`` 0: no smoothing)."""
    if tau <= 0:
        return new
    keep = float(np.exp(-dt / tau))
    return (keep * average + (1.0 - keep) * new).astype(np.float32)


@dataclass
class Track:
    track_id: int
    box: Box
    scores: np.ndarray  # smoothed probabilities
    emotion: int
    started: float
    last_update: float
    emotion_since: float
    missed: int = 0
    frames: int = 1
    candidate: int = -1
    candidate_since: float = 0.0
    time_per_emotion: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def confidence(self) -> float:
        return float(self.scores[self.emotion])


@dataclass(frozen=True)
class TrackEvent:
    """What happened to a track; the aggregator turns these into event payloads."""

    type: str  # track_started | emotion_changed | track_ended
    track: Track
    data: dict[str, Any]
    at: float = 0.0  # the timestamp of the frame it happened on


class Tracker:
    def __init__(self, settings: TrackerSettings, labels: Sequence[str]) -> None:
        self.settings = settings
        self.labels = tuple(labels)
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: Sequence[Box], scores: np.ndarray, now: float) -> list[TrackEvent]:
        """Match this frame's faces to tracks, smooth their scores, and report what changed."""
        events: list[TrackEvent] = []
        matched_tracks: set[int] = set()
        matched_boxes: set[int] = set()
        pairs = sorted(
            ((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        for overlap, ti, bi in pairs:
            if overlap < self.settings.iou_threshold:
                break
            if ti in matched_tracks or bi in matched_boxes:
                continue
            matched_tracks.add(ti)
            matched_boxes.add(bi)
            change = self._advance(self.tracks[ti], boxes[bi], scores[bi], now)
            if change is not None:
                events.append(change)

        survivors: list[Track] = []
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.missed += 1
                if track.missed > self.settings.max_missed:
                    events.append(self._end(track, now))
                    continue
            survivors.append(track)
        self.tracks = survivors

        for bi, box in enumerate(boxes):
            if bi not in matched_boxes:
                events.append(self._start(box, scores[bi], now))
        return events

    def carried(self) -> list[Track]:
        """Tracks whose face the last detection pass saw: classified again at their box until the next pass."""
        return [t for t in self.tracks if t.missed == 0]

    def carry(self, tracks: Sequence[Track], scores: np.ndarray, now: float) -> list[TrackEvent]:
        """Feed new scores for ``tracks`` at their current boxes, between detection passes.

        Only detection passes count towards ``max_missed``: a carried box is not
        evidence that the face is still there.
        """
        events = []
        for track, s in zip(tracks, scores):
            change = self._advance(track, track.box, s, now)
            if change is not None:
                events.append(change)
        return events

    def end_all(self, now: float) -> list[TrackEvent]:
        """End every track (shutdown), so their summaries are not lost."""
        events = [self._end(t, now) for t in self.tracks]
        self.tracks = []
        return events

    def _start(self, box: Box, scores: np.ndarray, now: float) -> TrackEvent:
        emotion = int(np.argmax(scores))
        track = Track(
            track_id=self._next_id,
            box=box,
            scores=np.asarray(scores, np.float32).copy(),
            emotion=emotion,
            started=now,
            last_update=now,
            emotion_since=now,
            time_per_emotion=np.zeros(len(self.labels)),
        )
        self._next_id += 1
        self.tracks.append(track)
        log.debug("track %d started (%s)", track.track_id, self.labels[emotion])
        return TrackEvent("track_started", track, {"emotion": self.labels[emotion], "confidence": round(track.confidence, 4)}, now)

    def _advance(self, track: Track, box: Box, scores: np.ndarray, now: float) -> TrackEvent | None:
        s = self.settings
        dt = max(0.0, now - track.last_update)
        track.time_per_emotion[track.emotion] += dt
        track.last_update = now
        track.box = box
        track.missed = 0
        track.frames += 1
        track.scores = ema(track.scores, np.asarray(scores, np.float32), dt, s.smoothing_s)
        top = int(np.argmax(track.scores))
        if top == track.emotion or track.scores[top] - track.scores[track.emotion] < s.hysteresis:
            track.candidate = -1
            return None
        if top != track.candidate:
            track.candidate, track.candidate_since = top, now
        if now - track.candidate_since < s.min_dwell_s:
            return None
        previous, held = track.emotion, now - track.emotion_since
        track.emotion, track.emotion_since = top, now
        track.candidate = -1
        log.debug("track %d: %s -> %s", track.track_id, self.labels[previous], self.labels[top])
        return TrackEvent(
            "emotion_changed",
            track,
            {
                "from": self.labels[previous],
                "to": self.labels[top],
                "confidence": round(track.confidence, 4),
                "previous_duration_s": round(held, 3),
            },
            now,
        )

    def _end(self, track: Track, now: float) -> TrackEvent:
        times = track.time_per_emotion
        total = float(times.sum())
        # A track seen on one frame only has no duration; its single emotion holds all the time.
        shares = times / total if total > 0 else np.eye(len(self.labels))[track.emotion]
        dominant = int(np.argmax(shares))
        return TrackEvent(
            "track_ended",
            track,
            {
                "duration_s": round(track.last_update - track.started, 3),
                "dominant": self.labels[dominant],
                "shares": {label: round(float(v), 4) for label, v in zip(self.labels, shares)},
                "frames": track.frames,
            },
            now,
        )
