"""``deepfer-edge analyze PATH...``: the emotions in photos and recordings, as a table, JSON or CSV.

No broker and no service: each photo gives one record (every face's box,
emotion, confidence and scores); each video is run through the daemon's own
pipeline (tracking, smoothing and dwell on the clip's timeline) and gives each
track's timeline. ``--annotate DIR`` writes copies with the faces boxed and
labelled.

Record formats (one JSON line each with ``--json``):

- photo: ``{"file", "width", "height", "faces": [{"box": [x, y, w, h], "emotion", "confidence", "scores": {...}}]}``
- video: ``{"file", "width", "height", "fps", "duration_s", "frames", "tracks": [{"track_id", "start_s",
  "end_s", "dominant", "shares", "segments": [{"emotion", "start_s", "end_s"}]}]}``
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from edge.annotate import Label, draw
from edge.preprocess import crop_square, to_gray
from edge.protocols import Frame, Message, SourceError
from edge.settings import EdgeSettings
from edge.sinks import wire
from edge.tracker import Track

log = logging.getLogger(__name__)

EX_NOINPUT = 66  # sysexits.h: an input file did not exist or was not readable
PROGRESS_EVERY_S = 2.0  # wall seconds between progress lines on stderr
CSV_FIELDS = ("file", "frame", "time_s", "face", "x", "y", "w", "h", "emotion", "confidence")


class InputError(Exception):
    """A path given to analyze cannot be read; the message names it and says why."""


def inputs(paths: Sequence[Path]) -> Iterator[tuple[str, Path]]:
    """("image" | "video", path) for each path, a folder's images and videos in name order."""
    from edge.sources import VIDEO_SUFFIXES
    from edge.sources.folder import IMAGE_SUFFIXES

    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                raise InputError(f"{path}: the folder holds no images or videos")
            for p in found:
                yield ("image" if p.suffix.lower() in IMAGE_SUFFIXES else "video"), p
        elif not path.exists():
            raise InputError(f"{path}: no such file or folder")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield "image", path
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            yield "video", path
        else:
            raise InputError(f"{path}: not a known image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                             f"or video ({', '.join(sorted(VIDEO_SUFFIXES))}) type")


@dataclass
class TrackLog:
    """What analyze keeps of one track: its timeline, rebuilt from the pipeline's events."""

    track_id: int
    start_s: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "start_s": self.start_s, "end_s": self.end.get("media_time_s"),
                "dominant": self.end.get("dominant"), "shares": self.end.get("shares"), "segments": self.segments}


class TimelineSink:
    """Collects the pipeline's events into per-track timelines (the sink analyze runs the daemon with)."""

    name = "timeline"
    on_closed: Callable[[], None] | None = None

    def __init__(self) -> None:
        self.tracks: dict[int, TrackLog] = {}

    def start(self) -> None:
        pass

    def publish(self, message: Message) -> None:
        e = message.payload
        if message.topic != wire.EVENTS or not isinstance(e, dict):
            return
        t = float(e.get("media_time_s", 0.0))
        if e["type"] == "track_started":
            log_ = self.tracks[e["track_id"]] = TrackLog(e["track_id"], t)
            log_.segments.append({"emotion": e["emotion"], "start_s": t, "end_s": None})
        elif e["type"] == "emotion_changed":
            segments = self.tracks[e["track_id"]].segments
            segments[-1]["end_s"] = t
            segments.append({"emotion": e["to"], "start_s": t, "end_s": None})
        elif e["type"] == "track_ended":
            log_ = self.tracks[e["track_id"]]
            log_.segments[-1]["end_s"] = t
            log_.end = e

    def status(self) -> dict[str, Any]:
        return {"tracks": len(self.tracks)}

    def stop(self, timeout: float = 5.0) -> None:
        pass


class Analyzer:
    """Runs photos and videos through the daemon's models and pipeline; writes records as it goes."""

    def __init__(self, settings: EdgeSettings, out: TextIO, fmt: str = "text", annotate: Path | None = None) -> None:
        from edge import daemon

        self.settings = settings.model_copy(deep=True)
        self.settings.mqtt.enabled = False
        self.settings.mqtt.persist = False
        self.settings.stdout.enabled = False
        self.models = daemon.build_models(self.settings)
        self.labels = list(self.models.bundle.labels)
        self.out = out
        self.fmt = fmt
        self.annotate = annotate
        self._csv: Any = None
        if fmt == "csv":
            self._csv = csv.writer(out)
            self._csv.writerow([*CSV_FIELDS, *self.labels])
        if annotate is not None:
            annotate.mkdir(parents=True, exist_ok=True)

    # -- photos --------------------------------------------------------------------------------

    def image(self, path: Path) -> dict[str, Any]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{path}: cannot be decoded as an image (a damaged file, or a format OpenCV cannot read)")
        m = self.models
        boxes = [d.box for d in m.detector.detect(Frame(image=image, index=0, t_capture=time.monotonic()))]
        scores = (
            m.classifier.classify(to_gray(image), [crop_square(b, m.geometry) for b in boxes])
            if boxes else np.empty((0, len(self.labels)), np.float32)
        )
        faces: list[dict[str, Any]] = []
        for box, s in zip(boxes, scores):
            top = int(np.argmax(s))
            faces.append({"box": [int(v) for v in box], "emotion": self.labels[top], "confidence": round(float(s[top]), 4),
                          "scores": {k: round(float(v), 4) for k, v in zip(self.labels, s)}})
        record = {"file": str(path), "width": image.shape[1], "height": image.shape[0], "faces": faces}
        if self.annotate is not None:
            labels = [Label(box, f["emotion"], f["confidence"]) for box, f in zip(boxes, faces)]
            target = self.annotate / path.name
            if not cv2.imwrite(str(target), draw(image, labels)):
                raise InputError(f"--annotate: cannot write {target}")
        self._emit_image(record)
        return record

    def _emit_image(self, r: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.out.write(json.dumps(r) + "\n")
        elif self.fmt == "csv":
            for i, f in enumerate(r["faces"]):
                self._csv.writerow([r["file"], 0, "", i, *f["box"], f["emotion"], f["confidence"],
                                    *(f["scores"][k] for k in self.labels)])
        else:
            faces = ", ".join(f"{f['emotion']} {f['confidence']:.2f} at {tuple(f['box'])}" for f in r["faces"]) or "no face"
            self.out.write(f"{r['file']}: {len(r['faces'])} face(s): {faces}\n")

    # -- videos --------------------------------------------------------------------------------

    def video(self, path: Path) -> dict[str, Any]:
        from edge import daemon
        from edge.sources import VideoFileSource

        source = VideoFileSource(path, loop=False, realtime=False)
        try:
            source.open()
        except SourceError as exc:
            raise InputError(str(exc).removeprefix("camera.source: ")) from None
        fps, length = source.fps, source.length_s
        timeline = TimelineSink()
        writer: cv2.VideoWriter | None = None
        size = [0, 0]
        frames = [0]
        last_progress = [time.monotonic()]
        last_time = [0.0]

        def on_frame(frame: Frame, tracks: Sequence[Track]) -> None:
            nonlocal writer
            frames[0] += 1
            size[:] = [frame.image.shape[1], frame.image.shape[0]]
            t = frame.timestamp
            last_time[0] = t
            if self._csv is not None:
                for tr in tracks:
                    self._csv.writerow([str(path), frame.index, round(t, 3), tr.track_id, *tr.box, self.labels[tr.emotion],
                                        round(tr.confidence, 4), *(round(float(v), 4) for v in tr.scores)])
            if self.annotate is not None:
                if writer is None:
                    target = self.annotate / f"{path.stem}.annotated.mp4"
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"mp4v"), fps or 30.0, tuple(size))
                    if not writer.isOpened():
                        raise InputError(f"--annotate: cannot write {target}")
                writer.write(draw(frame.image, [Label(tr.box, self.labels[tr.emotion], tr.confidence) for tr in tracks]))
            now = time.monotonic()
            if now - last_progress[0] >= PROGRESS_EVERY_S:
                last_progress[0] = now
                share = f"{100 * t / length:.0f}%, " if length else ""
                sys.stderr.write(f"analyze: {path.name}: {share}{t:.1f} of {length:.1f} s\n")

        comps = daemon.build(self.settings, sinks=[timeline], source=source, models=self.models)
        comps.pipeline.frame_hook = on_frame
        try:
            comps.pipeline.run()
        finally:
            source.close()
            if writer is not None:
                writer.release()
        duration = last_time[0] + (1.0 / fps if fps > 0 else 0.0)
        record = {"file": str(path), "width": size[0], "height": size[1], "fps": round(fps, 3),
                  "duration_s": round(duration, 3), "frames": frames[0],
                  "tracks": [t.record() for t in sorted(timeline.tracks.values(), key=lambda t: t.track_id)]}
        if source.skipped:
            record["skipped_frames"] = source.skipped
        self._emit_video(record)
        return record

    def _emit_video(self, r: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.out.write(json.dumps(r) + "\n")
        elif self.fmt == "text":
            self.out.write(f"{r['file']}: {r['duration_s']:.1f} s, {r['frames']} frames, {len(r['tracks'])} track(s)\n")
            for t in r["tracks"]:
                segs = ", ".join(f"{s['emotion']} {s['start_s']:.1f}-{s['end_s']:.1f}" for s in t["segments"])
                self.out.write(f"  track {t['track_id']}: {t['start_s']:.1f}-{t['end_s']:.1f} s, mostly {t['dominant']}: {segs}\n")


def analyze(settings: EdgeSettings, paths: Sequence[Path], fmt: str = "text", annotate: Path | None = None,
            out: TextIO | None = None) -> int:
    """Analyze every path; an unreadable one is reported and skipped, and makes the exit status 66."""
    if not paths:
        sys.stderr.write("deepfer-edge analyze: name at least one photo, video or folder (deepfer-edge analyze PATH...)\n")
        return 2
    failed = 0
    items: list[tuple[str, Path]] = []
    for path in paths:
        try:
            items.extend(inputs([path]))
        except InputError as exc:
            sys.stderr.write(f"deepfer-edge analyze: {exc}\n")
            failed += 1
    if not items:  # a mistyped path is named at once, without first loading the model and detector
        return EX_NOINPUT
    analyzer = Analyzer(settings, out or sys.stdout, fmt, annotate)
    for kind, path in items:
        try:
            analyzer.image(path) if kind == "image" else analyzer.video(path)
        except InputError as exc:
            sys.stderr.write(f"deepfer-edge analyze: {exc}\n")
            failed += 1
        analyzer.out.flush()
    return EX_NOINPUT if failed else 0
