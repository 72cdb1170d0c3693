"""Export a trained Keras model to the daemon's bundle: ``NAME.tflite`` + ``NAME.json``.

The int8 model takes the face crop's raw uint8 pixels (normalisation is folded
into the graph, and calibration spans 0..255 so the input scale is 1 and the
zero point 0) and outputs uint8 probabilities. Before anything is written the
float and the int8 model are evaluated side by side on the validation faces,
the int8 one through the daemon's own classifier; an int8 model that loses
more than ``max_drop`` points of top-1 accuracy is refused.

This module is the order of the steps; each step lives with its kind:
:mod:`train.runs` (the run folder), :mod:`train.graph` (the Keras edits),
:mod:`train.calibration` and :mod:`train.tflite` (conversion and checks),
:class:`edge.bundle.ModelBundle` (the JSON) and :mod:`train.card` (the model card).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import ModelBundle, load_bundle
from edge.labels import EMOTIONS
from edge.preprocess import DEFAULT_CROP_MARGIN
from train.calibration import as_nhwc
from train.data import FaceSet
from train.errors import ExportError
from train.graph import for_export, prior_shift
from train.runs import history_csv, resolve_model, run_recipe, trained_epochs, training_time
from train.tflite import LATENCY_RUNS, check_integer_only, compile_edgetpu, convert, measure_latency

__all__ = ["ExportError", "ExportOptions", "export", "read_crop_geometry"]

log = logging.getLogger(__name__)

MAX_INT8_DROP = 1.0  # top-1 points the int8 model may lose against the float one
RUNTIME_NOTE = (
    "TFLite builtin int8 ops only: runs on ai-edge-litert or tflite-runtime (XNNPACK on the CPU) and, "
    "once compiled by edgetpu_compiler into NAME_edgetpu.tflite, on a Coral Edge TPU"
)
CROP_GEOMETRY = Path(__file__).with_name("crop_geometry.json")


@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export` makes the bundle: the ``deepfer-train export`` flags, with their defaults."""

    int8: bool = True  # --int8 / --no-int8: full-integer, uint8 in and out; else float32
    version: str | None = None  # --version; None: today's date, YYYY.MM.DD
    max_drop: float = MAX_INT8_DROP  # --max-int8-drop: top-1 points int8 may lose against float on val
    prior_correction: bool = True  # --prior-correction: undo the recipe's class weights (graph.prior_shift)
    flip_tta: bool = False  # --flip-tta: average each face with its mirror image inside the model
    latency_runs: int = LATENCY_RUNS  # --latency-runs; 0 skips the measurement
    report: bool = True  # the model card NAME.md and its plots beside the bundle
    crop_margin: float = DEFAULT_CROP_MARGIN
    crop_geometry: dict[str, Any] | None = None  # None: train/crop_geometry.json


@dataclass(frozen=True)
class Comparison:
    """The float model and the converted one scored on the same validation faces."""

    source: str
    metrics: dict[str, dict[str, Any]]  # "float", then "int8" (or "tflite" for a float export) -> compute_metrics
    agreement: float  # share of faces given the same top-1 class by both

    @property
    def kind(self) -> str:
        return list(self.metrics)[-1]

    @property
    def drop(self) -> float:
        """Top-1 points the converted model loses against the float one (negative: it gains)."""
        return top1_drop(self.metrics["float"]["accuracy"], self.metrics[self.kind]["accuracy"])


def top1_drop(float_accuracy: float, converted_accuracy: float) -> float:
    return 100.0 * (float_accuracy - converted_accuracy)


def read_crop_geometry(path: Path = CROP_GEOMETRY) -> dict[str, Any]:
    """The fitted crop geometry bundles get (empty when none was fitted: margin-only framing)."""
    if not path.is_file():
        log.warning("%s is missing: the bundle gets no crop geometry and the daemon frames faces by crop_margin; "
                    "run tools/fit_crop_geometry.py --out %s", path, path)
        return {}
    return dict(json.loads(path.read_text()))


def float_predictions(model, faces: np.ndarray) -> np.ndarray:
    """Probabilities of the float Keras model (already ending in softmax) on uint8 faces.

    export() looks this and ``convert`` up in this module when it runs, so a test can replace
    either here (the int8 drop guard's test scores a bundle without converting again).
    """
    from train.evaluate import keras_predict_fn

    return keras_predict_fn(model)(faces)


def export(
    model: str | Path,
    out_dir: str | Path,
    name: str,
    calibration_faces: np.ndarray | None,
    val: FaceSet | None = None,
    training_data: dict[str, Any] | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """Convert a run's model (or a ``.keras`` file) into ``out_dir/NAME.tflite`` + ``NAME.json``.

    ``calibration_faces``: real training faces (N, S, S) uint8 for int8 calibration.
    ``val``: when given, float and int8 are evaluated on it and the export fails
    (ExportError, nothing written) if int8 top-1 is more than ``options.max_drop`` points
    below float. ``training_data``: what the CLI knows of the training faces (``source``,
    ``n_train``, ``class_counts``, which the prior correction needs). Everything is
    made in a staging folder and moved into ``out_dir`` only once it all succeeded.
    Returns the .tflite path.
    """
    from edge.classifier import TFLiteClassifier
    from edge.settings import ClassifierSettings

    opts = options or ExportOptions()
    check_name(name)
    model_path = resolve_model(model)
    recipe = run_recipe(model_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    power = float(recipe.get("class_weight_power", 0.0) or 0.0)
    shift = _prior_shift(power, training_data, opts.prior_correction)
    keras_model = _export_graph(model_path, power, shift, opts.flip_tta)
    size, channels = _square_input(keras_model, model_path)
    calib = _calibration_faces(calibration_faces, size, channels, model_path) if opts.int8 else None
    if val is not None and val.x.shape[1] != size:
        raise ExportError(f"{val.source}: faces are {val.x.shape[1]}px but {model_path.name} takes {size}px")

    log.info("converting %s (%d parameters) to %s TFLite", model_path, keras_model.count_params(), "int8" if opts.int8 else "float32")
    t0 = time.perf_counter()
    flat = convert(keras_model, calib, opts.int8)
    log.info("converted in %.1f s: %d bytes", time.perf_counter() - t0, len(flat))

    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        tflite = staging / f"{name}.tflite"
        tflite.write_bytes(flat)
        if opts.int8:
            check_integer_only(tflite)
        ModelBundle.create(
            tflite,
            name=name,
            version=opts.version or datetime.now(UTC).strftime("%Y.%m.%d"),
            labels=EMOTIONS,
            input_size=size,
            channels=channels,
            crop_margin=opts.crop_margin,
            # Detector box -> training framing, per detector (tools/fit_crop_geometry.py); it depends on the
            # detectors and on how FER2013 faces were cropped, not on the network.
            crop_geometry=read_crop_geometry() if opts.crop_geometry is None else opts.crop_geometry,
            output="probabilities",
            test_time_augmentation="flip" if opts.flip_tta else "none",
            prior_correction=_prior_record(power, shift),
        ).write()
        # Load it exactly as the daemon does: proves the json and the model agree.
        bundle = load_bundle(tflite)
        clf = TFLiteClassifier(bundle, ClassifierSettings(threads=1))
        qin, qout = clf.input_quantization, clf.output_quantization  # the model's quantisation as the daemon sees it
        if opts.int8 and not qin.is_raw_uint8:
            log.warning("int8 input is %s scale=%g zero=%d, not raw pixels; the daemon rescales it", qin.dtype, qin.scale, qin.zero_point)

        comparison = _compare(keras_model, clf, val, channels, opts) if val is not None else None
        latency_faces = calib if calib is not None else _faces_for(val, channels) if val is not None else None
        latency = _latency(clf, latency_faces, size, channels, opts.latency_runs)
        edgetpu = compile_edgetpu(tflite) if opts.int8 else {"compiled": False, "reason": "float model"}

        bundle = bundle.with_fields(
            input_dtype=qin.dtype.name,
            input_quantization={"scale": qin.scale, "zero_point": qin.zero_point},
            output_dtype=qout.dtype.name,
            metrics=_bundle_metrics(comparison, opts.int8),
            **_provenance(model_path, recipe, training_data, val, calib, keras_model),
            latency_ms_per_face=None if latency is None else round(latency, 3),
            latency_host=f"{_host()}, {clf.runtime}, 1 thread",
            runtime=RUNTIME_NOTE if opts.int8 else "float32 TFLite model: CPU only (no Edge TPU)",
            edgetpu=edgetpu,
            tflite_bytes=tflite.stat().st_size,
            sha256=_sha256(tflite),
        )
        bundle.write()
        if opts.report and comparison is not None:
            from train.card import write_bundle_card

            write_bundle_card(staging, bundle.meta, comparison.metrics, comparison.agreement, history_csv(model_path),
                              training_time(model_path), _host())
        del clf  # release the interpreter's mapping of the file before moving it
        for f in sorted(staging.iterdir()):
            if f.is_file():
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = out / f"{name}.tflite"
    log.info("wrote %s and %s", final, final.with_suffix(".json").name)
    return final


def check_name(name: str) -> None:
    """A bundle name is a file stem: no path, and not ending in _edgetpu (the compiled model's suffix)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith("_edgetpu"):
        raise ExportError(f"--name {name!r}: use letters, digits, '_', '-', '.' (no path, no _edgetpu suffix)")


def _prior_shift(power: float, training_data: dict[str, Any] | None, wanted: bool) -> np.ndarray | None:
    if not wanted:
        return None
    shift = prior_shift((training_data or {}).get("class_counts"), power)
    if power and shift is None:
        raise ExportError("the prior correction needs the training class counts (the CLI's --data); "
                          "or export with --no-prior-correction")
    return shift


def _export_graph(model_path: Path, power: float, shift: np.ndarray | None, flip_tta: bool) -> Any:
    from train.evaluate import load_keras

    if shift is not None:
        log.info("prior correction: logits + %.2f * log(training prior) = %s", power, np.round(shift, 3).tolist())
    return for_export(load_keras(model_path), shift, flip_tta)


def _square_input(keras_model: Any, model_path: Path) -> tuple[int, int]:
    """(side, channels) of the model's input; the daemon feeds square faces only."""
    _, size, size2, channels = keras_model.input_shape
    if size != size2:
        raise ExportError(f"{model_path}: input {size}x{size2} is not square; the daemon feeds square faces")
    return int(size), int(channels)


def _calibration_faces(faces: np.ndarray | None, size: int, channels: int, model_path: Path) -> np.ndarray:
    if faces is None:
        raise ExportError("int8 export needs calibration faces: real training faces (the CLI's --data, --calibration N)")
    calib = as_nhwc(faces, channels)
    if calib.shape[1:3] != (size, size):
        raise ExportError(f"calibration faces are {calib.shape[1]}px but {model_path.name} takes {size}px")
    return calib


def _faces_for(val: FaceSet, channels: int) -> np.ndarray:
    from train.evaluate import faces_for

    return faces_for(val, channels)


def _compare(keras_model: Any, clf: Any, val: FaceSet, channels: int, opts: ExportOptions) -> Comparison:
    """Score float and converted model on ``val``; ExportError when int8 loses more than ``opts.max_drop``."""
    from train.evaluate import compute_metrics

    faces = _faces_for(val, channels)
    p_float = float_predictions(keras_model, faces)
    p_q = clf.predict_tensors(faces)
    kind = "int8" if opts.int8 else "tflite"
    result = Comparison(
        source=val.source,
        metrics={"float": compute_metrics(val.y, p_float), kind: compute_metrics(val.y, p_q)},
        agreement=float((p_float.argmax(1) == p_q.argmax(1)).mean()),
    )
    f1, q1 = result.metrics["float"]["accuracy"], result.metrics[kind]["accuracy"]
    log.info(
        "val %s: float top-1 %.2f%% | %s top-1 %.2f%% (%+.2f points) | same top-1 class on %.1f%% of faces",
        val.source, 100 * f1, kind, 100 * q1, -result.drop, 100 * result.agreement,
    )
    if opts.int8 and result.drop > opts.max_drop:
        raise ExportError(
            f"int8 top-1 {100 * q1:.2f}% is {result.drop:.2f} points below float {100 * f1:.2f}% on {val.source} "
            f"(allowed {opts.max_drop:g}); nothing was written. Calibrate on more real training faces "
            "(--calibration 1000), or train longer so BatchNorm statistics settle, then export again"
        )
    return result


def _latency(clf: Any, faces: np.ndarray | None, size: int, channels: int, runs: int) -> float | None:
    """Median ms per face on ``faces`` (random pixels when there are none: the time does not depend on them)."""
    if runs <= 0:
        return None
    if faces is None:
        faces = np.random.default_rng(0).integers(0, 256, (8, size, size, channels), dtype=np.uint8)
    latency = measure_latency(clf, faces, runs)
    log.info("latency %.2f ms per face (median of %d, 1 thread, %s)", latency, runs, clf.runtime)
    return latency


def _prior_record(power: float, shift: np.ndarray | None) -> dict[str, Any] | str:
    """The bundle's ``prior_correction``: what was folded into the logits (a warm start takes it back out)."""
    if shift is None:
        return "none"
    return {"class_weight_power": power, "logit_shift": [round(float(v), 5) for v in shift]}


def _bundle_metrics(comparison: Comparison | None, int8: bool) -> dict[str, Any]:
    """The bundle's ``metrics``: the summary of each model's scores, and how often they agree ({} without val)."""
    if comparison is None:
        return {}
    from train.evaluate import summary

    metrics: dict[str, Any] = {k: summary(m) for k, m in comparison.metrics.items()}
    metrics["val_source"] = comparison.source
    metrics["int8_float_agreement" if int8 else "tflite_float_agreement"] = round(comparison.agreement, 4)
    return metrics


def _provenance(model_path: Path, recipe: dict[str, Any], training_data: dict[str, Any] | None,
                val: FaceSet | None, calib: np.ndarray | None, keras_model: Any) -> dict[str, Any]:
    """What the bundle was made from: the data, the calibration faces, the recipe, the model file."""
    td = dict(training_data or {})
    if "source" not in td and recipe.get("data"):
        td["source"] = recipe["data"]
    if val is not None:
        td.setdefault("val_source", val.source)
        td.setdefault("n_val", len(val))
    return {
        "training_data": td,
        "calibration": {"n": 0 if calib is None else int(len(calib)), "source": td.get("source", "")},
        "recipe": recipe,
        "model": {"file": model_path.name, "parameters": int(keras_model.count_params()), **trained_epochs(model_path)},
        "created": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPUs"
