"""The pipeline's own measurements: stages timed by a context manager, one writer, read by stats and bench."""

import time

import pytest

from edge.metrics import Metrics


def test_a_stage_is_timed_even_when_it_fails() -> None:
    m = Metrics()
    with m.stage("detect"):
        time.sleep(0.01)
    with pytest.raises(RuntimeError), m.stage("detect"):
        raise RuntimeError("the detector broke")
    ring = m.times.rings["detect"]
    assert len(ring) == 2 and ring[0] >= 0.01
    assert set(m.latency_ms()) == {"detect"} and m.latency_ms()["detect"]["p95"] >= m.latency_ms()["detect"]["p50"]


def test_reset_forgets_the_warm_up_and_rings_stay_bounded() -> None:
    m = Metrics(size=4)
    for _ in range(10):
        m.add("infer", 0.001)
    assert len(m.times.rings["infer"]) == 4
    m.reset()
    assert m.latency_ms() == {}


def test_the_daemons_stats_read_the_pipelines_metrics() -> None:
    from edge import daemon
    from edge.settings import EdgeSettings

    comps = daemon.build(EdgeSettings(camera={"demo_frames": 12, "realtime": False}), sinks=[])
    comps.source.open()
    comps.pipeline.run()
    assert comps.pipeline.aggregator.metrics is comps.pipeline.metrics
    assert {"detect", "classify", "total"} <= set(comps.pipeline.metrics.latency_ms())
