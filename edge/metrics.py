"""What the pipeline measures of itself: stage latencies and the faces in view.

The pipeline is the one writer; the aggregator reads it for ``stats`` and
``bench`` for its report. Stages are timed with a context manager::

    with metrics.stage("detect"):
        boxes = detector.detect(frame)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

# "infer" is the model alone, per face: the part of "classify" left once the crops are made.
STAGES = ("capture", "detect", "classify", "infer", "publish", "total")


@dataclass
class StageTimes:
    """Recent per-stage latencies (seconds) in bounded rings; percentiles on demand."""

    size: int = 2048
    rings: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        ring = self.rings.get(stage)
        if ring is None:
            ring = self.rings[stage] = deque(maxlen=self.size)
        ring.append(seconds)

    def summary_ms(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage in STAGES:
            ring = self.rings.get(stage)
            if ring:
                p50, p95 = np.percentile(np.fromiter(ring, float), [50, 95]) * 1000.0
                out[stage] = {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}
        return out


class Metrics:
    """Stage latencies in bounded rings, and how many faces the last frame showed."""

    def __init__(self, size: int = 2048) -> None:
        self.times = StageTimes(size)
        self.faces_now = 0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """A duration measured elsewhere (the capture queue's wait, the model's own time per face)."""
        self.times.add(name, seconds)

    def latency_ms(self) -> dict[str, dict[str, float]]:
        return self.times.summary_ms()

    def reset(self) -> None:
        """Forget the latencies so far (bench: after the warm-up)."""
        self.times.rings.clear()
