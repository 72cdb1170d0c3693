"""Tracker: stable ids, smoothing and dwell in seconds, hysteresis, expiry with summaries."""

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


def test_emotion_changes_only_past_hysteresis_and_min_dwell():
    s = TrackerSettings(smoothing_s=0, hysteresis=0.2, min_dwell_s=2.0)
    tr = Tracker(s, EMOTIONS)
    box = Box(10, 10, 60, 60)
    tr.update([box], onehot(HAPPY)[None], 0.0)
    # Sad leads, but by less than the hysteresis: no change however long it lasts.
    close = onehot(SAD, 0.5)
    close[HAPPY] = 0.4
    for k in range(1, 8):
        assert tr.update([box], close[None], k) == []
    assert tr.tracks[0].emotion == HAPPY
    # A clear lead must hold for min_dwell_s.
    assert tr.update([box], onehot(SAD)[None], 10) == []
    assert tr.update([box], onehot(SAD)[None], 11) == []
    ev = tr.update([box], onehot(SAD)[None], 12)
    assert len(ev) == 1 and ev[0].type == "emotion_changed"
    assert ev[0].data["from"] == "happy" and ev[0].data["to"] == "sad"
    assert ev[0].data["previous_duration_s"] == pytest.approx(12.0)
    assert ev[0].data["confidence"] == pytest.approx(0.9, abs=1e-4)


def test_interrupted_candidate_restarts_the_dwell():
    tr = Tracker(TrackerSettings(smoothing_s=0, hysteresis=0.1, min_dwell_s=2.0), EMOTIONS)
    box = Box(0, 0, 40, 40)
    tr.update([box], onehot(HAPPY)[None], 0)
    tr.update([box], onehot(SAD)[None], 1)
    tr.update([box], onehot(SAD)[None], 2)
    tr.update([box], onehot(HAPPY)[None], 3)  # back to happy: the run of sad is broken
    assert tr.update([box], onehot(SAD)[None], 4) == []
    assert tr.update([box], onehot(SAD)[None], 5) == []
    assert tr.update([box], onehot(SAD)[None], 6)[0].data["to"] == "sad"


def test_smoothing_damps_a_single_outlier():
    # After 1 s, a time constant of 2.8 s keeps exp(-1/2.8) = 0.7 of the old average.
    tr = Tracker(TrackerSettings(smoothing_s=2.8, hysteresis=0.05, min_dwell_s=0), EMOTIONS)
    box = Box(0, 0, 40, 40)
    tr.update([box], onehot(HAPPY)[None], 0)
    assert tr.update([box], onehot(SAD, 1.0)[None], 1) == []  # 0.7*0.9+0 vs 0.3: happy still leads
    assert tr.tracks[0].emotion == HAPPY


def test_track_ends_after_max_missed_with_time_shares():
    tr = Tracker(TrackerSettings(smoothing_s=0, hysteresis=0.0, min_dwell_s=0, max_missed=2), EMOTIONS)
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
    tr = Tracker(TrackerSettings(max_missed=2, smoothing_s=0, min_dwell_s=0), EMOTIONS)
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


def emotions_at(fps: float, signal, seconds: float, settings: TrackerSettings) -> list[tuple[str, float]]:
    """Feed ``signal(t)`` (scores) to one track at ``fps``; the (emotion, time) of each change, start included."""
    tr = Tracker(settings, EMOTIONS)
    box = Box(0, 0, 40, 40)
    out = []
    for k in range(int(seconds * fps) + 1):
        t = k / fps
        for e in tr.update([box], signal(t)[None], t):
            out.append((e.data.get("emotion") or e.data["to"], t))
    return out


def expression(t: float) -> np.ndarray:
    """Happy, a 0.3 s flicker of surprise, sad from 4 s, happy again from 8 s; noisy as a model is."""
    rng = np.random.default_rng(int(t * 1000))
    main = SAD if 4 <= t < 8 else HAPPY
    v = onehot(EMOTIONS.index("surprise") if 2.0 <= t < 2.3 else main, 0.7)
    return np.clip(v + rng.normal(0, 0.05, v.shape).astype(np.float32), 0, 1)


@pytest.mark.parametrize("fps", [5, 15, 30, 90])
def test_the_same_expression_gives_the_same_emotions_at_any_frame_rate(fps: float) -> None:
    s = TrackerSettings()  # defaults: smoothing_s 0.5, min_dwell_s 1.0
    changes = emotions_at(fps, expression, 12.0, s)
    assert [e for e, _ in changes] == ["happy", "sad", "happy"]  # the flicker never shows
    # Each change comes min_dwell_s (plus the smoothing's lag) after the expression changed, within a frame or so.
    reference = emotions_at(300, expression, 12.0, s)
    for (_, t), (_, t_ref) in zip(changes, reference):
        assert abs(t - t_ref) <= 1.5 / fps + 0.01


def test_no_emotion_segment_is_shorter_than_min_dwell() -> None:
    s = TrackerSettings(smoothing_s=0.0, hysteresis=0.05, min_dwell_s=0.8)
    rng = np.random.default_rng(1)
    # Expressions held for 0.1 to 2 s at random, at 30 fps: mostly flicker, now and then a real change.
    ends = np.cumsum(rng.uniform(0.1, 2.0, 40))
    labels = rng.integers(0, 7, 40)
    changes = emotions_at(30, lambda t: onehot(int(labels[np.searchsorted(ends, t)])), 20.0, s)
    assert len(changes) > 3  # it does change now and then...
    gaps = np.diff([t for _, t in changes])
    assert gaps.min() >= 0.8 - 1e-9  # ...but never holds an emotion for less than min_dwell_s


@pytest.mark.parametrize("old", ["smoothing", "min_frames"])
def test_the_old_frame_counting_settings_name_their_replacements(old: str) -> None:
    from edge.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"tracker: .*no longer a setting.*tracker\.(smoothing_s|min_dwell_s)"):
        load_settings(None, {"tracker": {old: 1}})
