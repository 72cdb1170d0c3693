"""The daemon end to end, as a user runs it: a real process, real model, real OpenCV, real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker import Subscriber, read_retained

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CLIP = SHARED / "data" / "faces" / "pyfeat" / "single_face.mp4"
needs_clip = pytest.mark.skipif(not CLIP.exists(), reason=f"{CLIP} is absent (the ../shared data folder is not beside the checkout)")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFER_") and k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def daemon(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", *args], cwd=ROOT, env=env or clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_demo_prints_events_on_stdout():
    p = daemon("--camera", "demo", "--stdout", "--device-id", "demo-box")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    msgs = lines(out)
    topics = [m["topic"] for m in msgs]
    assert {"events", "state", "stats"} <= set(topics), topics
    events = [m["payload"] for m in msgs if m["topic"] == "events"]
    assert events[0]["type"] == "track_started" and events[-1]["type"] == "track_ended"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(m["payload"]["device_id"] == "demo-box" for m in msgs)
    stats = [m["payload"] for m in msgs if m["topic"] == "stats"][-1]
    assert stats["frames"]["processed"] > 0 and stats["model"]["name"]
    assert "stopped after" in err


def test_with_mqtt_off_the_daemon_never_loads_paho():
    # The MQTT sink's client library is the largest import of a sink that is off by default.
    code = ("import sys; from edge.cli import main; rc = main(['--camera', 'demo', '--max-frames', '30']); "
            "assert 'paho' not in sys.modules, sorted(m for m in sys.modules if m.startswith('paho')); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


@needs_clip
def test_clip_to_broker_availability_events_state_stats(broker):
    prefix = "deepfer/e2e"
    sub = Subscriber(broker, [f"{prefix}/#"])
    try:
        p = daemon("--camera", str(CLIP), "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device-id", "e2e")
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/availability") and m.text == "offline" for m in ms), 20), err
    finally:
        sub.close()
    avail = [m.text for m in sub.on(f"{prefix}/availability")]
    assert avail[0] == "online" and avail[-1] == "offline"
    events = [json.loads(m.payload) for m in sub.on(f"{prefix}/events")]
    assert events and events[0]["type"] == "track_started" and events[-1]["type"] == "track_ended"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    states = [json.loads(m.payload) for m in sub.on(f"{prefix}/state")]
    stats = [json.loads(m.payload) for m in sub.on(f"{prefix}/stats")]
    assert states and stats
    assert states[-1]["frames"] >= 1 and stats[-1]["frames"]["processed"] == 72  # every frame of a file is processed
    assert set(stats[-1]["latency_ms"]) >= {"detect", "classify", "infer", "publish"}
    retained = read_retained(broker, f"{prefix}/#")
    assert retained[f"{prefix}/availability"] == b"offline"
    assert json.loads(retained[f"{prefix}/state"])["seq"] == states[-1]["seq"]


@needs_clip
def test_sigterm_flushes_and_exits_zero(broker):
    prefix = "deepfer/term"
    sub = Subscriber(broker, [f"{prefix}/#"])
    try:
        p = daemon("--camera", str(CLIP), "--loop", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device-id", "term")
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/events") for m in ms), 60), "no event before SIGTERM"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/availability") and m.text == "offline" for m in ms), 20)
    finally:
        sub.close()
    events = [json.loads(m.payload) for m in sub.on(f"{prefix}/events")]
    started = {e["track_id"] for e in events if e["type"] == "track_started"}
    ended = {e["track_id"] for e in events if e["type"] == "track_ended"}
    assert started and started == ended  # every open track was closed, none lost
    assert "SIGTERM received" in err


@needs_clip
def test_killed_daemon_reads_offline_through_last_will(broker):
    prefix = "deepfer/kill"
    sub = Subscriber(broker, [f"{prefix}/availability"])
    try:
        p = daemon("--camera", str(CLIP), "--loop", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device-id", "kill")
        assert sub.wait_for(lambda ms: any(m.text == "online" for m in ms), 60)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        # The broker sends the will once it notices the dead connection (at once on a closed socket).
        assert sub.wait_for(lambda ms: ms[-1].text == "offline", 30)
    finally:
        sub.close()
    assert read_retained(broker, f"{prefix}/#")[f"{prefix}/availability"] == b"offline"


def test_stats_count_the_frames_a_damaged_video_skips(tmp_path):
    from media import damaged_video, frames_opencv_reads_on

    clip = damaged_video(tmp_path / "damaged.avi", frames=200, bad=(100,))
    p = daemon("--camera", str(clip), "--stdout")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    frames = [m["payload"] for m in lines(out) if m["topic"] == "stats"][-1]["frames"]
    assert frames["processed"] == frames_opencv_reads_on(clip) and frames["skipped"] >= 1
    assert frames["in"] == frames["processed"] + frames["skipped"]  # a file drops nothing
    assert f"{frames['skipped']} unusable frames skipped" in err


@needs_clip
def test_bench_prints_figures():
    p = daemon("bench", "--camera", str(CLIP), "--frames", "60", "--json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    r = json.loads(out)
    assert r["frames"] == 60 and r["processed_fps"] > 0 and r["rss_mb"] > 0
    assert 0 < r["private_mb"] < r["rss_mb"] and abs(r["private_mb"] + r["shared_files_mb"] - r["rss_mb"]) < 2
    assert r["face_found_ratio"] >= 0.9
    lat = r["latency_ms"]
    assert {"detect", "classify", "infer", "read"} <= set(lat)
    # The model alone is one part of the classify stage (crops come first), and it is what the bench calls the classifier.
    assert 0 < lat["infer"]["p50"] < lat["classify"]["p50"] and r["classifier_ms_per_face"] == lat["infer"]["p50"]


def test_check_reports_each_part(tmp_path):
    p = daemon("check", "--camera", "demo", "--json")
    out, _ = p.communicate(timeout=120)
    results = {r["check"]: r for r in json.loads(out)}
    assert results["model"]["ok"] and results["camera"]["ok"] and results["detector"]["ok"], results
    assert results["broker"]["ok"] and "disabled" in results["broker"]["detail"]
    assert p.returncode == 0
    p = daemon("check", "--camera", str(tmp_path / "nope.mp4"), "--mqtt-host", "127.0.0.1", "--mqtt-port", "1", "--json")
    out, _ = p.communicate(timeout=120)
    results = {r["check"]: r for r in json.loads(out)}
    assert p.returncode == 1
    assert not results["camera"]["ok"] and "nope.mp4" in results["camera"]["detail"]
    assert not results["broker"]["ok"] and "127.0.0.1:1" in results["broker"]["detail"]


@needs_clip
def test_systemd_notify_ready_watchdog_status_stopping(tmp_path):
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    env = clean_env() | {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    p = subprocess.Popen([sys.executable, "-m", "edge.cli", "--camera", str(CLIP), "--loop"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            "READY=1" in got and got.count("WATCHDOG=1") >= 2 and any(m.startswith("STATUS=") and "fps" in m for m in got)
        ):
            got += sock.recv(4096).decode().split("\n")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        sock.settimeout(2)
        try:
            while "STOPPING=1" not in got:
                got += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            pass
    finally:
        p.kill()
        sock.close()
    assert p.returncode == 0, err
    assert got.index("READY=1") < got.index("WATCHDOG=1")  # ready only once camera, model and sinks are up
    assert got.count("WATCHDOG=1") >= 2
    assert any(m.startswith("STATUS=") and "fps" in m and "face" in m for m in got), got
    assert "STOPPING=1" in got


def test_camera_missing_at_start_exits_69_config_errors_78(tmp_path):
    # A camera that cannot be opened may come back (systemd retries 69); a malformed source will not (78).
    p = daemon("--camera", "/dev/video97", "--stdout")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 69 and "/dev/video97" in err
    p = daemon("--camera", "ftp://nowhere", "--stdout")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 78 and "camera.source" in err


def test_settings_problems_found_at_start_exit_78(tmp_path):
    p = daemon("--camera", "demo", "--model", str(tmp_path / "none.tflite"), "--stdout")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 78 and "classifier.model" in err
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[mqtt]\nenabled = true\nport = 1\npassword_file = "{tmp_path / "nope"}"\n')
    p = daemon("--config", str(cfg), "--camera", "demo")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 78 and "mqtt.password_file" in err


def test_mixed_image_sizes_in_a_folder_do_not_crash(tmp_path):
    import cv2
    import numpy as np

    from edge.demo import FACE_ASSET

    face = cv2.imread(str(ROOT / "edge" / "assets" / FACE_ASSET))
    folder = tmp_path / "stills"
    folder.mkdir()
    for i in range(4):  # boxes carried from a big still must not be cut out of a tiny one
        cv2.imwrite(str(folder / f"{i}a.png"), face)
        cv2.imwrite(str(folder / f"{i}b.png"), np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8))
    p = daemon("--camera", str(folder), "--stdout")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    stats = [m["payload"] for m in lines(out) if m["topic"] == "stats"][-1]
    assert stats["frames"]["processed"] == 8


def test_an_unreadable_file_is_a_settings_error_not_a_camera_outage(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video")
    p = daemon("--camera", str(bad), "--stdout")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 78 and "clip.mp4" in err


FACE_STILL = SHARED / "data" / "faces" / "pyfeat" / "single_face.jpg"
NO_FACE_STILL = SHARED / "data" / "faces" / "pyfeat" / "free-mountain-vector-01.jpg"


@pytest.mark.skipif(not FACE_STILL.exists(), reason=f"{FACE_STILL} is absent (the ../shared data folder is not beside the checkout)")
def test_broker_outage_then_daemon_restart_while_it_is_down_lose_no_event(broker_factory, tmp_path):
    """The whole daemon, mid-clip: broker stops, the daemon keeps producing events, is restarted while the
    broker is still down, and the broker comes back. Delivery is at least once: the subscriber sees every
    ``seq`` from 1 up, in order, with no gap; an event whose acknowledgement was lost may come twice."""
    import shutil
    from datetime import datetime

    broker = broker_factory(persistence=True)
    topic = "deepfer/outage/events"
    sub = Subscriber(broker, [topic], persistent=True)
    # A face comes and goes on every loop of the folder: a track starts and ends each time.
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        shutil.copy(FACE_STILL, folder / f"a{i}.jpg")
        shutil.copy(NO_FACE_STILL, folder / f"b{i}.jpg")
    env = clean_env() | {
        "DEEPFER_MQTT__PERSIST": "true", "DEEPFER_MQTT__STATE_DIR": str(tmp_path / "state"),
        "DEEPFER_TRACKER__MAX_MISSED": "1", "DEEPFER_DETECTOR__EVERY_N_FRAMES": "1",
        "DEEPFER_MQTT__RECONNECT_MAX_S": "1",
    }
    args = ["--camera", str(folder), "--loop", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device-id", "outage"]

    def start() -> subprocess.Popen:
        return daemon(*args, env=env)

    def received() -> list[dict]:
        return [json.loads(m.payload) for m in sub.on(topic)]

    first, second = start(), None
    try:
        assert sub.wait_for(lambda ms: len(ms) >= 6, 60), "no events before the outage"
        broker.stop()
        down_at = datetime.now().astimezone()
        time.sleep(2.0)  # the daemon goes on producing events with nobody to take them
        first.send_signal(signal.SIGTERM)
        _, err_first = first.communicate(timeout=60)
        assert first.returncode == 0, err_first
        assert "kept in" in err_first and "for the next start" in err_first, err_first

        second = start()  # broker still down: it starts from the stored queue and sequence numbers
        time.sleep(2.0)
        broker.start()
        up_at = datetime.now().astimezone()
        seen_before_restart = max(e["seq"] for e in received())
        assert sub.wait_for(lambda ms: len(ms) >= seen_before_restart + 20, 60), "events stopped after the broker came back"
        second.send_signal(signal.SIGTERM)
        _, err_second = second.communicate(timeout=60)
        assert second.returncode == 0, err_second
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate(timeout=10)
        sub.close()

    events = received()
    got = [e["seq"] for e in events]
    unique = list(dict.fromkeys(got))
    assert unique == list(range(1, len(unique) + 1)), f"gap or reorder: {unique}"
    made_while_down = [e for e in events if down_at < datetime.fromisoformat(e["ts"].replace("Z", "+00:00")) < up_at]
    assert len({e["seq"] for e in made_while_down}) >= 4, "no events were produced during the outage"
    started = [e["track_id"] for e in events if e["type"] == "track_started"]
    ended = [e["track_id"] for e in events if e["type"] == "track_ended"]
    assert started and set(ended) <= set(started)
    print(f"daemon outage + restart: {len(unique)} events, {len(got) - len(unique)} delivered twice")
