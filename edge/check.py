"""``deepfer-edge check``: try each part of a set-up and say, in one line each, what is wrong."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.settings import EdgeSettings

log = logging.getLogger(__name__)


def _model(settings: EdgeSettings) -> str:
    from edge.bundle import load_bundle
    from edge.classifier import create_classifier

    bundle = load_bundle(settings.classifier.model)
    clf = create_classifier(bundle, settings.classifier)
    face = np.full((1, bundle.input_size, bundle.input_size, bundle.channels), 128, np.uint8)
    clf.predict_tensors(face)
    note = " — UNTRAINED placeholder, its emotions are meaningless" if bundle.untrained else ""
    top1 = bundle.metrics.get("int8", {}).get("top1")
    acc = f", val top-1 {top1:.1%}" if isinstance(top1, (int, float)) else ""
    return f"{bundle.name} v{bundle.version} on {clf.backend} ({clf.runtime}){acc}{note}"


def _detector(settings: EdgeSettings) -> str:
    from edge.detectors import create_detector

    return create_detector(settings.detector).name


def _camera(settings: EdgeSettings) -> str:
    from edge.sources import open_source

    source = open_source(settings.camera)
    source.open()
    try:
        frame = source.read(timeout=10.0)
        if frame is None:
            raise RuntimeError(f"{source.name} opened but delivered no frame within 10 s")
        h, w = frame.image.shape[:2]
        return f"{source.name}: {w}x{h} frames"
    finally:
        source.close()


def _broker(settings: EdgeSettings) -> str:
    from edge.sinks.mqtt import check_broker

    m = settings.mqtt
    if not m.enabled:
        return "MQTT disabled (set mqtt.enabled or --mqtt-host)"
    error = check_broker(m, timeout=5.0)
    if error:
        raise RuntimeError(error)
    return f"{m.host}:{m.port} accepted the connection{' (TLS)' if m.tls else ''}"


CHECKS: tuple[tuple[str, Callable[[EdgeSettings], str]], ...] = (
    ("model", _model),
    ("detector", _detector),
    ("camera", _camera),
    ("broker", _broker),
)


def check(settings: EdgeSettings, as_json: bool = False) -> int:
    results: list[dict[str, Any]] = []
    for name, fn in CHECKS:
        try:
            results.append({"check": name, "ok": True, "detail": fn(settings)})
        except Exception as exc:  # every failure is reported, none stops the other checks
            results.append({"check": name, "ok": False, "detail": str(exc) or type(exc).__name__})
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        for r in results:
            sys.stdout.write(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']:<9} {r['detail']}\n")
    return 0 if all(r["ok"] for r in results) else 1
