"""Tracker: stable ids, smoothing, hysteresis and minimum frames, expiry with summaries."""

import numpy as np
import pytest

from edge.labels import EMOTIONS
from edge.preprocess import Box
from edge.settings import TrackerSettings
from edge.tracker import Tracker, iou

HAPPY, SAD, NEUTRAL = EMOTIONS.index("happy"), EMOTIONS.index("sad"), EMOTIONS.index("neutral")


def onehot(i: int, p: float = 0.9) -> np.ndarray:
    v = np.full(len(EMOTIONS), (1 - p) / (len(EMOTIONS) - 1), np.float32)
    v[i] = p
    return v


def test_iou():
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert iou(Box(0, 0, 10, 10), Box(20, 20, 10, 10)) == 0.0
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_ids_stay_stable_while_faces_move():
    tr = Tracker(TrackerSettings(), EMOTIONS)
    ev = tr.update([Box(0, 0, 50, 50), Box(200, 0, 50, 50)], np.stack([onehot(HAPPY)] * 2), 0.0)
    assert [e.type for e in ev] == ["track_started", "track_started"]
    ids = {e.track.track_id for e in ev}
    for k in range(1, 10):
        # Given in reverse order: matching must follow overlap, not list position.
        ev = tr.update([Box(200 + 2 * k, 0, 50, 50), Box(2 * k, 0, 50, 50)], np.stack([onehot(HAPPY)] * 2), k * 0.1)
        assert ev == []
    assert {t.track_id for t in tr.tracks} == ids
    left = min(tr.tracks, key=lambda t: t.box.x)
    assert left.track_id == min(ids) and left.box.x == 18


def test_emotion_changes_only_past_hysteresis_and_min_frames():
    s = TrackerSettings(smoothing=1.0, hysteresis=0.2, min_frames=3)
    tr = Tracker(s, EMOTIONS)
    box = Box(10, 10, 60, 60)
    tr.update([box], onehot(HAPPY)[None], 0.0)
    # Sad leads, but by less than the hysteresis: no change however long it lasts.
    close = onehot(SAD, 0.5)
    close[HAPPY] = 0.4
    for k in range(1, 8):
        assert tr.update([box], close[None], k) == []
    assert tr.tracks[0].emotion == HAPPY
    # A clear lead must hold for min_frames consecutive frames.
    assert tr.update([box], onehot(SAD)[None], 10) == []
    assert tr.update([box], onehot(SAD)[None], 11) == []
    ev = tr.update([box], onehot(SAD)[None], 12)
    assert len(ev) == 1 and ev[0].type == "emotion_changed"
    assert ev[0].data["from"] == "happy" and ev[0].data["to"] == "sad"
    assert ev[0].data["previous_duration_s"] == pytest.approx(12.0)
    assert ev[0].data["confidence"] == pytest.approx(0.9, abs=1e-4)


def test_interrupted_candidate_resets_the_count():
    tr = Tracker(TrackerSettings(smoothing=1.0, hysteresis=0.1, min_frames=3), EMOTIONS)
    box = Box(0, 0, 40, 40)
    tr.update([box], onehot(HAPPY)[None], 0)
    tr.update([box], onehot(SAD)[None], 1)
    tr.update([box], onehot(SAD)[None], 2)
    tr.update([box], onehot(HAPPY)[None], 3)  # back to happy: the run of sad is broken
    assert tr.update([box], onehot(SAD)[None], 4) == []
    assert tr.update([box], onehot(SAD)[None], 5) == []
    assert tr.update([box], onehot(SAD)[None], 6)[0].data["to"] == "sad"


def test_smoothing_damps_a_single_outlier():
    tr = Tracker(TrackerSettings(smoothing=0.3, hysteresis=0.05, min_frames=1), EMOTIONS)
    box = Box(0, 0, 40, 40)
    tr.update([box], onehot(HAPPY)[None], 0)
    assert tr.update([box], onehot(SAD, 1.0)[None], 1) == []  # 0.7*0.9+0 vs 0.3: happy still leads
    assert tr.tracks[0].emotion == HAPPY


def test_track_ends_after_max_missed_with_time_shares():
    tr = Tracker(TrackerSettings(smoothing=1.0, hysteresis=0.0, min_frames=1, max_missed=2), EMOTIONS)
    box = Box(0, 0, 40, 40)
    tr.update([box], onehot(HAPPY)[None], 0.0)
    tr.update([box], onehot(HAPPY)[None], 3.0)  # 3 s happy
    tr.update([box], onehot(SAD)[None], 4.0)  # change to sad at t=4 (happy held 4 s)
    tr.update([box], onehot(SAD)[None], 5.0)  # 1 s sad
    assert tr.update([], np.empty((0, 7)), 6.0) == []
    assert tr.update([], np.empty((0, 7)), 7.0) == []
    ev = tr.update([], np.empty((0, 7)), 8.0)
    assert [e.type for e in ev] == ["track_ended"]
    d = ev[0].data
    assert d["duration_s"] == pytest.approx(5.0)
    assert d["dominant"] == "happy"
    assert d["shares"]["happy"] == pytest.approx(0.8) and d["shares"]["sad"] == pytest.approx(0.2)
    assert tr.tracks == []


def test_new_face_far_away_starts_new_track_and_end_all():
    tr = Tracker(TrackerSettings(), EMOTIONS)
    tr.update([Box(0, 0, 40, 40)], onehot(NEUTRAL)[None], 0)
    ev = tr.update([Box(0, 0, 40, 40), Box(300, 300, 40, 40)], np.stack([onehot(NEUTRAL)] * 2), 1)
    assert [e.type for e in ev] == ["track_started"] and ev[0].track.track_id == 2
    ended = tr.end_all(2)
    assert sorted(e.track.track_id for e in ended) == [1, 2] and tr.tracks == []
    assert ended[1].data["dominant"] == "neutral"  # one-frame track: its only emotion


def test_carried_boxes_do_not_keep_a_vanished_face_alive():
    """Between detection passes the pipeline re-classifies tracked boxes; that must not count as seeing the face."""
    tr = Tracker(TrackerSettings(max_missed=2, smoothing=1.0, min_frames=1), EMOTIONS)
    box = Box(0, 0, 40, 40)
    tr.update([box], onehot(HAPPY)[None], 0)
    carried = tr.carried()
    assert [t.track_id for t in carried] == [1]
    ev = tr.carry(carried, onehot(SAD)[None], 1)  # scores still flow between passes
    assert ev[0].type == "emotion_changed" and tr.tracks[0].box == box
    ended = []
    for k in range(3):  # the face is gone: three detection passes find nothing
        ended += tr.update([], np.empty((0, 7)), 2 + k)
        assert tr.carried() == []  # nothing is carried once a pass missed the face
    assert [e.type for e in ended] == ["track_ended"]
