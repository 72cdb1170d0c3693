"""Assembles the pipeline from settings and runs it as a service (signals, systemd, shutdown)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge import __version__
from edge.aggregate import Aggregator
from edge.bundle import ModelBundle, load_bundle
from edge.messages import Envelope
from edge.metrics import Metrics
from edge.pipeline import Pipeline, sinks_status
from edge.preprocess import CropGeometry
from edge.protocols import CameraUnavailable, Classifier, EventSink, FaceDetector, FrameSource, ServiceNotifier, SourceError
from edge.settings import EdgeSettings
from edge.tracker import Tracker

log = logging.getLogger(__name__)

# A read blocked this long means a wedged driver: let systemd's watchdog (WatchdogSec=30) restart us.
STALLED_READ_S = 20.0


@dataclass
class Components:
    settings: EdgeSettings
    bundle: ModelBundle
    source: FrameSource
    pipeline: Pipeline
    sinks: list[EventSink] = field(default_factory=list)


@dataclass
class Models:
    """The two models and how faces are framed between them."""

    bundle: ModelBundle
    detector: FaceDetector
    classifier: Classifier
    geometry: CropGeometry


def build_models(settings: EdgeSettings) -> Models:
    from edge.classifier import create_classifier
    from edge.detectors import create_detector

    bundle = load_bundle(settings.classifier.model)
    if bundle.untrained:
        log.warning("model %s is an UNTRAINED placeholder: its emotions are meaningless", bundle.name)
    classifier = create_classifier(bundle, settings.classifier)
    detector = create_detector(settings.detector)
    return Models(bundle, detector, classifier, bundle.geometry_for(detector.name))


def build(settings: EdgeSettings, sinks: list[EventSink] | None = None, source: FrameSource | None = None,
          models: Models | None = None) -> Components:
    """Create every component from its own settings section (nothing is started yet); ``sinks``,
    ``source`` and ``models`` replace the configured ones (bench, analyze, tests)."""
    from edge.sinks import create_sinks
    from edge.sinks.mqtt.journal import sequence_file
    from edge.sources import open_source

    models = build_models(settings) if models is None else models
    bundle, detector, classifier = models.bundle, models.detector, models.classifier
    source = open_source(settings.camera) if source is None else source
    envelope = Envelope(settings.device_id, sequence_file(settings.mqtt))
    sinks = create_sinks(settings, envelope, bundle.labels) if sinks is None else sinks
    info = {
        "backend": classifier.backend,
        "runtime": classifier.runtime,
        "detector": detector.name,
        "source": source.name,
        "version": __version__,
        "model": {"name": bundle.name, "version": bundle.version},
    }
    metrics = Metrics()
    aggregator = Aggregator(settings.events, bundle.labels, envelope, info, event_qos=settings.mqtt.qos,
                            status_provider=lambda: sinks_status(sinks), metrics=metrics)
    tracker = Tracker(settings.tracker, bundle.labels)
    pipeline = Pipeline(
        source, detector, classifier, tracker, aggregator, sinks,
        detect_every=settings.detector.every_n_frames, geometry=models.geometry, metrics=metrics,
    )
    if len(sinks) == 1:
        # `deepfer-edge --stdout | head`: with nobody left to read, there is nothing left to do.
        sinks[0].on_closed = pipeline.stop
    return Components(settings, bundle, source, pipeline, list(sinks))


def status_line(status: Mapping[str, Any], fps: float) -> str:
    broker = status.get("sinks", {}).get("mqtt")
    parts = [f"{fps:.1f} fps", f"{status.get('faces', 0)} face(s)", f"{status.get('dropped', 0)} dropped"]
    if broker is not None:
        parts.append("broker connected" if broker.get("connected") else "broker DISCONNECTED")
    return ", ".join(parts)


def run(components: Components, notifier: ServiceNotifier | None = None, max_frames: int = 0) -> int:
    """Start the sinks and the source, process until a signal or the end of the source, shut down cleanly."""
    pipeline = components.pipeline

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: finishing the current frame and shutting down", signal.Signals(signum).name)
        pipeline.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    last_status = [time.monotonic(), 0]

    stalled = [False]

    def heartbeat(status: Mapping[str, Any]) -> None:
        if notifier is None:
            return
        stuck = components.source.stalled_for > STALLED_READ_S
        if stuck and not stalled[0]:
            log.error("%s: a camera read has been blocked for over %.0f s; no longer feeding the systemd watchdog",
                      components.source.name, STALLED_READ_S)
        stalled[0] = stuck
        if not stuck:
            notifier.watchdog()
        now = time.monotonic()
        if now - last_status[0] >= 5.0:
            fps = (status["processed"] - last_status[1]) / (now - last_status[0])
            notifier.status(status_line(status, fps))
            last_status[0], last_status[1] = now, status["processed"]

    pipeline.heartbeat = heartbeat
    started: list[EventSink] = []
    try:
        for sink in components.sinks:
            sink.start()
            started.append(sink)
        try:
            components.source.open()
        except SourceError as exc:
            if components.source.live:
                raise CameraUnavailable(str(exc)) from None
            raise
        log.info(
            "running: source %s, detector %s, model %s v%s on %s, sinks %s",
            components.source.name, pipeline.detector.name, components.bundle.name, components.bundle.version,
            pipeline.classifier.backend, ", ".join(s.name for s in components.sinks) or "none",
        )
        if notifier is not None:
            notifier.ready()
            notifier.status("running")
        pipeline.run(max_frames=max_frames)
    finally:
        if notifier is not None:
            notifier.stopping()
        components.source.close()
        for sink in reversed(started):
            try:
                sink.stop(timeout=5.0)
            except Exception:  # one sink's failure must not keep the others from flushing
                log.exception("sink %s did not stop cleanly", sink.name)
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info(
        "stopped after %d frames (faces found in %d of %d detection passes, %d frames dropped by the source, "
        "%d unusable frames skipped)",
        pipeline.processed, pipeline.detections_with_faces, pipeline.detections, components.source.dropped,
        components.source.skipped + pipeline.skipped,
    )
    return 0
