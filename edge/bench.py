"""``deepfer-edge bench``: throughput and per-stage latency of the real pipeline on this device."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.protocols import EndOfStream, Message
from edge.settings import EdgeSettings

log = logging.getLogger(__name__)

WARMUP_FRAMES = 20


class SerializingSink:
    """Stands in for the real sinks: pays for the JSON encoding each message costs, sends nothing."""

    name = "bench"
    on_closed: Callable[[], None] | None = None

    def __init__(self) -> None:
        self.messages = 0

    def start(self) -> None:
        pass

    def publish(self, message: Message) -> None:
        json.dumps(message.payload)
        self.messages += 1

    def status(self) -> dict[str, Any]:
        return {"messages": self.messages}

    def stop(self, timeout: float = 5.0) -> None:
        pass


def memory_mb() -> dict[str, float]:
    """Resident memory in MB, from /proc (Linux): total, peak, and its two parts.

    ``private`` (RssAnon) is what this process alone costs; ``files`` (RssFile)
    is pages of shared libraries and the model file mapped from the page cache,
    clean and shared with every other process using them, and reclaimable.
    """
    keys = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "private", "RssFile": "files"}
    values = dict.fromkeys(keys.values(), float("nan"))
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in keys:
                    values[keys[key]] = int(rest.split()[0]) / 1024.0
    except OSError:
        pass
    return values


def measure(settings: EdgeSettings, frames: int) -> dict[str, Any]:
    from edge import daemon

    settings = settings.model_copy(deep=True)
    settings.camera.loop = True  # a short clip is replayed to reach the frame count
    settings.camera.realtime = False
    settings.mqtt.persist = False  # a benchmark must not advance a running daemon's stored sequence numbers
    comps = daemon.build(settings, sinks=[SerializingSink()])
    pipe, source = comps.pipeline, comps.source
    source.open()
    read_times: list[float] = []
    try:
        for _ in range(WARMUP_FRAMES):
            frame = source.read(timeout=5.0)
            if frame is not None:
                pipe.process(frame)
        pipe.metrics.reset()
        det_before, found_before, done_before = pipe.detections, pipe.detections_with_faces, pipe.processed
        t_start = time.perf_counter()
        while pipe.processed - done_before < frames:
            t0 = time.perf_counter()
            try:
                frame = source.read(timeout=5.0)
            except EndOfStream:
                break
            read_times.append(time.perf_counter() - t0)
            if frame is None:
                raise RuntimeError(f"source {source.name} delivered no frame within 5 s")
            pipe.process(frame)
        wall = time.perf_counter() - t_start
    finally:
        source.close()
    n = pipe.processed - done_before
    lat = pipe.metrics.latency_ms()
    lat.pop("capture", None)  # queueing delay; meaningless when frames are pulled as fast as processed
    rt = np.array(read_times) * 1000.0
    lat["read"] = {"p50": round(float(np.percentile(rt, 50)), 3), "p95": round(float(np.percentile(rt, 95)), 3)}
    detections = pipe.detections - det_before
    found = pipe.detections_with_faces - found_before
    mem = memory_mb()
    return {
        "source": source.name,
        "frames": n,
        "processed_fps": round(n / wall, 1),
        # Of the frames the detector ran on (every detector.every_n_frames-th): how often it found the face.
        "face_found_ratio": round(found / detections, 4) if detections else 0.0,
        "detections": detections,
        "latency_ms": lat,
        # The model alone (tensor in, invoke, scores out), per face; "classify" adds the crop and resize.
        # Without a face the model never ran: there is no per-face time to show.
        "classifier_ms_per_face": lat["infer"]["p50"] if found and "infer" in lat else None,
        "detector": pipe.detector.name,
        "backend": pipe.classifier.backend,
        "model": comps.bundle.name,
        "rss_mb": round(mem["rss"], 1),
        "peak_rss_mb": round(mem["peak"], 1),
        "private_mb": round(mem["private"], 1),
        "shared_files_mb": round(mem["files"], 1),
    }


def bench(settings: EdgeSettings, frames: int = 300, as_json: bool = False) -> int:
    result = measure(settings, frames)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    out = [
        f"source            {result['source']}",
        f"detector/backend  {result['detector']} / {result['backend']} ({result['model']})",
        f"frames            {result['frames']}",
        f"processed fps     {result['processed_fps']}",
        f"face found        {result['face_found_ratio'] * 100:.1f}% of {result['detections']} detection passes",
        f"classifier        {result['classifier_ms_per_face']} ms per face p50 (the model alone; classify adds the crop)"
        if result["classifier_ms_per_face"] is not None
        else "classifier        no face found, so no per-face time; bench a clip with a face in view (--camera clip.mp4)",
        f"rss               {result['rss_mb']} MB (peak {result['peak_rss_mb']} MB): "
        f"{result['private_mb']} MB private, {result['shared_files_mb']} MB shared library and model pages",
        "stage latency ms  p50 / p95",
    ]
    for stage, v in result["latency_ms"].items():
        out.append(f"  {stage:<15} {v['p50']:.3f} / {v['p95']:.3f}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def bench_accuracy(settings: EdgeSettings, faces: Path, limit: int = 0, as_json: bool = False) -> int:
    """``bench --faces``: what detection and framing cost in accuracy (see :mod:`edge.facebench`)."""
    from edge.facebench import accuracy

    r = accuracy(settings, faces, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2) + "\n")
        return 0
    g = r["geometry"]
    out = [
        f"faces             {r['faces']} rendered from {r['source']}",
        f"detector          {r['detector']} (crop: {g['scale']} x box, offset {g['dx']}, {g['dy']}, basis {g['basis']})",
        f"found             {r['found']} ({r['found_ratio'] * 100:.1f}%), {r['false_tracks']} other tracks",
        f"top-1 end to end  {r['top1_end_to_end_all'] * 100:.1f}% of all faces, {r['top1_end_to_end_found'] * 100:.1f}% of found",
        f"top-1 plain crop  {r['top1_plain_found'] * 100:.1f}% of the same found faces ({r['top1_plain_all'] * 100:.1f}% of all)",
        f"framing loss      {r['framing_loss_points']:.1f} ± {r['framing_loss_se_points']:.1f} points "
        "(plain minus end to end, found faces; ± one standard error)",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0
