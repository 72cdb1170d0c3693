"""`deepfer-edge watch`: the terminal view, from messages and from a real broker."""

import io
import json

from edge.settings import load_settings
from edge.watch import WatchModel, watch


def payload(**kw):
    return json.dumps({"v": 1, "ts": "2026-11-23T00:00:00Z", "device_id": "d", **kw}).encode()


def test_model_renders_devices_and_counts_missed_events():
    m = WatchModel("deepfer")
    m.feed("deepfer/kitchen/availability", b"online")
    m.feed("deepfer/kitchen/state", payload(seq=1, faces=2, dominant="happy", shares={"happy": 0.75}))
    m.feed("deepfer/kitchen/stats", payload(seq=1, fps={"processed": 14.5}))
    m.feed("deepfer/kitchen/events", payload(seq=1, type="track_started", track_id=3, emotion="sad"))
    m.feed("deepfer/kitchen/events", payload(seq=4, type="emotion_changed", track_id=3, **{"from": "sad", "to": "happy"}))
    m.feed("deepfer/hall/availability", b"offline")
    m.feed("other/x/state", payload(seq=1, faces=9))  # another prefix: ignored
    m.feed("deepfer/kitchen/state", b"not json")  # ignored, keeps the last good state
    text = m.render()
    kitchen = next(line for line in text.splitlines() if line.startswith("kitchen"))
    assert "online" in kitchen and " 2 " in kitchen and "happy 75%" in kitchen and "14.5" in kitchen
    assert "#3 sad -> happy" in kitchen and "(2 events missed)" in kitchen
    assert any(line.startswith("hall") and "offline" in line for line in text.splitlines())
    assert "other" not in text


def test_watch_reads_a_real_broker(broker):
    broker.publish("deepfer/shelf/availability", "online", retain=True)
    broker.publish("deepfer/shelf/state", payload(seq=7, faces=1, dominant="surprise", shares={"surprise": 1.0}), retain=True)
    settings = load_settings(overrides={"mqtt": {"host": broker.host, "port": broker.port}})
    out = io.StringIO()
    assert watch(settings, duration=2.0, out=out) == 0
    last = out.getvalue().strip().split("device")[-1]
    assert "shelf" in last and "surprise 100%" in last and "online" in last
