"""Aggregation into events, state and stats; the envelope's schema and per-topic seq."""

import json
from datetime import datetime

import numpy as np
import pytest

from edge.aggregate import Aggregator
from edge.labels import EMOTIONS
from edge.messages import SCHEMA_VERSION, Envelope
from edge.preprocess import Box
from edge.protocols import Frame
from edge.settings import EventsSettings, TrackerSettings
from edge.tracker import Tracker

HAPPY, SAD = EMOTIONS.index("happy"), EMOTIONS.index("sad")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def scores(i):
    v = np.full(7, 0.01, np.float32)
    v[i] = 0.94
    return v[None]


@pytest.fixture
def rig():
    clock = Clock()
    env = Envelope("shelf-1")
    agg = Aggregator(EventsSettings(window_s=5, stats_interval_s=10), EMOTIONS, env, {"backend": "cpu"}, clock=clock)
    tr = Tracker(TrackerSettings(smoothing_s=0, hysteresis=0.1, min_dwell_s=1.0), EMOTIONS)
    return clock, agg, tr


def step(clock, agg, tr, t, boxes, s, frames_in):
    clock.t = t
    ev = tr.update(boxes, s if len(boxes) else np.empty((0, 7)), t)
    agg.metrics.faces_now = len(tr.carried())  # the pipeline's count of faces in view, which stats and state report
    return agg.on_frame(live_frame(t, frames_in - 1), tr.tracks, ev, 0)


def live_frame(t, index, **kw):
    return Frame(image=np.zeros((2, 2, 3), np.uint8), index=index, t_capture=t, **kw)


def check_envelope(payload, seq):
    assert payload["v"] == SCHEMA_VERSION
    assert payload["device_id"] == "shelf-1"
    assert payload["seq"] == seq
    assert datetime.fromisoformat(payload["ts"].replace("Z", "+00:00")).tzinfo is not None
    json.dumps(payload)  # must be plain JSON


def test_events_state_and_seq(rig):
    clock, agg, tr = rig
    box = Box(10, 10, 50, 50)
    out = []
    for k in range(4):  # t = 0..3: happy
        out += step(clock, agg, tr, float(k), [box], scores(HAPPY), k + 1)
    for k in range(4, 7):  # t = 4..6: sad, changes at t=5 (min_frames=2); window closes at t=5
        out += step(clock, agg, tr, float(k), [box], scores(SAD), k + 1)
    events = [m for m in out if m.topic == "events"]
    states = [m for m in out if m.topic == "state"]
    assert [e.payload["type"] for e in events] == ["track_started", "emotion_changed"]
    for i, e in enumerate(events, 1):
        check_envelope(e.payload, i)
        assert e.qos == 1 and not e.retain
    started, changed = (e.payload for e in events)
    assert started["emotion"] == "happy" and started["track_id"] == 1 and started["box"] == [10, 10, 50, 50]
    assert changed["from"] == "happy" and changed["to"] == "sad" and changed["previous_duration_s"] == pytest.approx(5.0)
    assert len(states) == 1 and states[0].retain
    st = states[0].payload
    check_envelope(st, 1)
    assert st["faces"] == 1 and st["frames"] == 6
    # t=0..4 happy (the t=4 frame has not switched yet), t=5 sad: 5/6 happy.
    assert st["dominant"] == "happy"
    assert st["shares"]["happy"] == pytest.approx(5 / 6, abs=1e-3) and st["shares"]["sad"] == pytest.approx(1 / 6, abs=1e-3)
    assert sum(st["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert st["mean_scores"]["happy"] > st["mean_scores"]["sad"]


def test_empty_window_and_stats(rig):
    clock, agg, tr = rig
    out = []
    for k in range(12):
        out += step(clock, agg, tr, float(k), [], None, k + 1)
    states = [m.payload for m in out if m.topic == "state"]
    stats = [m.payload for m in out if m.topic == "stats"]
    assert [s["seq"] for s in states] == [1, 2]
    assert states[0]["faces"] == 0 and states[0]["dominant"] is None
    assert len(stats) == 1
    s = stats[0]
    check_envelope(s, 1)
    assert s["fps"]["processed"] == pytest.approx(1.1, abs=0.01) and s["frames"]["processed"] == 11
    assert s["backend"] == "cpu" and s["uptime_s"] == pytest.approx(10.0)


def test_flush_ends_tracks_and_closes_the_window(rig):
    clock, agg, tr = rig
    step(clock, agg, tr, 0.0, [Box(0, 0, 40, 40)], scores(HAPPY), 1)
    step(clock, agg, tr, 1.0, [Box(0, 0, 40, 40)], scores(HAPPY), 2)
    clock.t = 2.0
    out = agg.flush(tr.end_all(2.0))
    assert [m.topic for m in out] == ["events", "state", "stats"]
    ended = out[0].payload
    assert ended["type"] == "track_ended" and ended["dominant"] == "happy" and ended["seq"] == 2
    assert out[1].payload["frames"] == 2 and out[1].payload["dominant"] == "happy"


def test_sequence_numbers_survive_a_restart(tmp_path):
    f = tmp_path / "seq.json"
    env = Envelope("d", f)
    assert [env.message("events", {}).payload["seq"] for _ in range(3)] == [1, 2, 3]
    env2 = Envelope("d", f)
    assert env2.message("events", {}).payload["seq"] == 4
    assert env2.message("state", {}).payload["seq"] == 1
    f.write_text("not json")
    assert Envelope("d", f).message("events", {}).payload["seq"] == 1


def test_windows_and_events_of_a_recording_run_on_its_own_timeline(rig):
    clock, agg, tr = rig
    clock.t = 1000.0  # wall time is far from the recording's position and stands still: file speed
    box = Box(0, 0, 40, 40)
    out = []
    for k in range(13):  # a recording 0..6 s at 2 frames/s
        t = k / 2
        ev = tr.update([box], scores(HAPPY if t < 3 else SAD), t)
        out += agg.on_frame(Frame(np.zeros((2, 2, 3), np.uint8), k, 1000.0, t_media=t), tr.tracks, ev, 0)
    states = [m.payload for m in out if m.topic == "state"]
    assert [s["window_s"] for s in states] == [5.0]  # one whole window, by the recording's clock
    events = [m.payload for m in out if m.topic == "events"]
    assert [(e["type"], e["media_time_s"]) for e in events] == [("track_started", 0.0), ("emotion_changed", 4.0)]
    assert "file" not in events[0]


def test_events_of_a_photo_name_its_file(rig):
    _, agg, tr = rig
    ev = tr.update([Box(0, 0, 40, 40)], scores(HAPPY), 5.0)
    (msg,) = agg.on_frame(live_frame(5.0, 0, file="party.jpg"), tr.tracks, ev, 0)
    assert msg.payload["file"] == "party.jpg" and "media_time_s" not in msg.payload


def test_stats_count_what_the_source_lost(rig):
    clock, agg, tr = rig
    out = []
    for k in range(11):
        clock.t = float(k)
        # By frame 11 the camera has dropped 4 frames, passed over 2 damaged ones and been reopened once.
        out += agg.on_frame(live_frame(float(k), k), tr.tracks, [], dropped=4, skipped=2, reopens=1)
    (stats,) = [m.payload for m in out if m.topic == "stats"]
    assert stats["frames"] == {"in": 11, "processed": 11, "dropped": 4, "skipped": 2, "reopens": 1}
