"""Recordings and photos as users mean them: clip time, emotions that hold, photos kept apart, ``analyze``."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from media import face_file

from edge.sources import DemoSource, VideoFileSource

REPO = Path(__file__).resolve().parents[2]
WOMAN2_S = 15.47  # fer_pkg/woman2.mp4: 464 frames at 29.97 fps


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFER_")}
    e.update(extra)
    return e


def deepfer(*args: str, timeout: float = 120, log_level: str = "WARNING", **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args, "--log-level", log_level], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env(**extra))


def messages(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def events(out: str) -> list[dict]:
    return [m["payload"] for m in messages(out) if m["topic"] == "events"]


def emotion_sequence(evs: list[dict]) -> list[tuple]:
    return [(e["type"], e.get("emotion") or e.get("to") or e.get("dominant"), e["media_time_s"]) for e in evs]


# --- media time --------------------------------------------------------------------------------------


def test_video_frames_carry_their_position_in_the_file() -> None:
    source = VideoFileSource(face_file("fer_pkg/woman2.mp4"), loop=False)
    with source:
        times = [source.read().t_media for _ in range(4)]
    assert times == pytest.approx([0.0, 1 / 29.97, 2 / 29.97, 3 / 29.97], abs=1e-3)


def test_a_clip_at_file_speed_reports_clip_time_and_holds_its_emotions() -> None:
    run = deepfer("--camera", str(face_file("fer_pkg/woman2.mp4")), "--stdout")
    assert run.returncode == 0, run.stderr
    evs = events(run.stdout)
    (ended,) = [e for e in evs if e["type"] == "track_ended"]
    assert abs(ended["duration_s"] - WOMAN2_S) <= 0.05 * WOMAN2_S  # was 2.85 s: processing time
    assert ended["media_time_s"] == pytest.approx(ended["duration_s"], abs=0.05)
    states = [m["payload"] for m in messages(run.stdout) if m["topic"] == "state"]
    assert 3 <= len(states) <= 4  # window_s = 5 over 15.5 s of clip (was 1)
    changes = [e for e in evs if e["type"] == "emotion_changed"]
    assert 1 <= len(changes) <= 8  # was 16
    assert all(c["previous_duration_s"] >= 1.0 for c in changes)  # tracker.min_dwell_s
    assert all("media_time_s" in e for e in evs)


def test_the_same_clip_in_real_time_gives_the_same_events() -> None:
    clip = str(face_file("fer_pkg/woman2.mp4"))
    fast = deepfer("--camera", clip, "--stdout")
    started = time.monotonic()
    paced = deepfer("--camera", clip, "--stdout", DEEPFER_CAMERA__REALTIME="true")
    wall = time.monotonic() - started
    assert fast.returncode == 0 and paced.returncode == 0, paced.stderr
    assert emotion_sequence(events(paced.stdout)) == emotion_sequence(events(fast.stdout))
    assert wall >= 0.9 * WOMAN2_S  # it really played at the clip's own rate


def test_a_consumer_that_falls_behind_a_real_time_recording_gets_drops_counted() -> None:
    source = DemoSource(frames=60, width=160, height=120, fps=30, realtime=True)
    with source:
        first = source.read()
        time.sleep(0.6)  # a stall of 0.6 s: frames due more than FiniteSource.LAG_S ago are dropped
        second = source.read()
    assert first.t_media == 0.0 and second.t_media >= 0.3
    assert source.dropped >= 9 and second.index == source.dropped + 1


# --- photos --------------------------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for rel in ("pyfeat/multi_face.jpg", "pyfeat/single_face.jpg", "fer_pkg/justin.jpg"):
        shutil.copy(face_file(rel), folder / Path(rel).name)
    return folder


def test_an_image_folder_is_a_set_of_photos_each_its_own_scene(photos: Path) -> None:
    run = deepfer("--camera", str(photos), "--stdout")
    assert run.returncode == 0, run.stderr
    evs = events(run.stdout)
    files_of: dict[int, set[str]] = {}
    for e in evs:
        files_of.setdefault(e["track_id"], set()).add(e["file"])
    assert all(len(f) == 1 for f in files_of.values())  # no track spans two photos
    per_file = {f: sum(1 for fs in files_of.values() if fs == {f}) for f in ("multi_face.jpg", "single_face.jpg", "justin.jpg")}
    assert per_file == {"multi_face.jpg": 5, "single_face.jpg": 1, "justin.jpg": 1}
    assert sum(e["type"] == "track_ended" for e in evs) == 7


def test_camera_sequence_keeps_a_time_lapse_as_one_scene(tmp_path: Path) -> None:
    folder = tmp_path / "lapse"
    folder.mkdir()
    for i in range(4):
        shutil.copy(face_file("pyfeat/single_face.jpg"), folder / f"{i:03d}.jpg")
    run = deepfer("--camera", str(folder), "--stdout", DEEPFER_CAMERA__SEQUENCE="true", DEEPFER_CAMERA__FPS="2")
    assert run.returncode == 0, run.stderr
    evs = events(run.stdout)
    assert [e["type"] for e in evs if e["type"] != "emotion_changed"] == ["track_started", "track_ended"]
    assert evs[-1]["duration_s"] == pytest.approx(1.5) and "file" not in evs[-1]


# --- analyze -----------------------------------------------------------------------------------------


def analyze(*args: str) -> subprocess.CompletedProcess:
    return deepfer("analyze", *args, timeout=180)


def test_analyze_a_photo_lists_every_face_as_one_json_line() -> None:
    run = analyze(str(face_file("pyfeat/multi_face.jpg")), "--json")
    assert run.returncode == 0, run.stderr
    (record,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert record["file"].endswith("multi_face.jpg") and record["width"] > 0 and record["height"] > 0
    assert len(record["faces"]) == 5
    for face in record["faces"]:
        assert len(face["box"]) == 4 and face["emotion"] in face["scores"]
        assert face["confidence"] == max(face["scores"].values())
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=0.02)


def test_analyze_a_folder_gives_one_record_per_photo(photos: Path) -> None:
    run = analyze(str(photos), "--json")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(r["file"]).name for r in records] == ["justin.jpg", "multi_face.jpg", "single_face.jpg"]
    assert [len(r["faces"]) for r in records] == [1, 5, 1]


def test_analyze_a_video_gives_each_tracks_timeline_in_clip_time() -> None:
    run = analyze(str(face_file("fer_pkg/woman2.mp4")), "--json")
    assert run.returncode == 0, run.stderr
    (record,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert record["frames"] == 464 and record["duration_s"] == pytest.approx(WOMAN2_S, abs=0.05)
    (track,) = record["tracks"]
    segs = track["segments"]
    assert segs[0]["start_s"] == track["start_s"] == 0.0 and segs[-1]["end_s"] == track["end_s"]
    assert all(a["end_s"] == b["start_s"] and a["emotion"] != b["emotion"] for a, b in itertools.pairwise(segs))
    assert all(s["end_s"] - s["start_s"] >= 1.0 for s in segs[:-1])  # min_dwell_s
    assert track["dominant"] == max(track["shares"], key=track["shares"].get)


def test_analyze_csv_has_a_row_per_face_and_per_track_and_frame(photos: Path) -> None:
    run = analyze(str(photos / "multi_face.jpg"), str(face_file("pyfeat/single_face.mp4")), "--csv")
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    photo = [r for r in rows if r["file"].endswith(".jpg")]
    video = [r for r in rows if r["file"].endswith(".mp4")]
    assert len(photo) == 5 and {r["face"] for r in photo} == {"0", "1", "2", "3", "4"}
    assert len(video) >= 0.95 * 72 and float(video[-1]["time_s"]) > float(video[0]["time_s"])
    assert all(r["emotion"] in r and float(r[r["emotion"]]) == pytest.approx(float(r["confidence"]), abs=1e-3) for r in rows)


def test_analyze_annotate_writes_labelled_copies(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated"
    run = analyze(str(photos / "single_face.jpg"), str(face_file("pyfeat/single_face.mp4")), "--annotate", str(out))
    assert run.returncode == 0, run.stderr
    original = cv2.imread(str(photos / "single_face.jpg"))
    drawn = cv2.imread(str(out / "single_face.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).mean() > 0.5
    cap = cv2.VideoCapture(str(out / "single_face.annotated.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 72
    cap.release()
    assert "single_face.jpg: 1 face(s): " in run.stdout


def test_analyze_reports_unreadable_input_in_one_line_and_goes_on(photos: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    run = analyze(str(tmp_path / "missing.mp4"), str(broken), str(photos / "justin.jpg"), "--json")
    assert run.returncode == 66
    assert "Traceback" not in run.stderr
    assert "missing.mp4: no such file or folder" in run.stderr and "broken.jpg: cannot be decoded" in run.stderr
    assert [Path(json.loads(line)["file"]).name for line in run.stdout.splitlines()] == ["justin.jpg"]


def test_analyze_with_only_missing_paths_names_them_without_loading_the_model(tmp_path: Path) -> None:
    run = deepfer("analyze", str(tmp_path / "missing.jpg"), str(tmp_path / "typo"), log_level="INFO")
    assert run.returncode == 66
    assert run.stderr.strip().splitlines() == [
        f"deepfer-edge analyze: {tmp_path / 'missing.jpg'}: no such file or folder",
        f"deepfer-edge analyze: {tmp_path / 'typo'}: no such file or folder",
    ]
