"""Export a trained Keras model to the daemon's bundle: ``NAME.tflite`` + ``NAME.json``.

The int8 model takes the face crop's raw uint8 pixels (normalisation is folded
into the graph, and calibration spans 0..255 so the input scale is 1 and the
zero point 0) and outputs uint8 probabilities. Before anything is written the
float and the int8 model are evaluated side by side on the validation faces,
the int8 one through the daemon's own classifier; an int8 model that loses
more than ``max_drop`` points of top-1 accuracy is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import ModelBundle, load_bundle
from edge.labels import EMOTIONS
from edge.preprocess import DEFAULT_CROP_MARGIN
from train.data import FaceSet

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = 500
MAX_INT8_DROP = 1.0  # top-1 points the int8 model may lose against the float one
LATENCY_RUNS = 300
EDGETPU_HINT = (
    "edgetpu_compiler is not on PATH, so no NAME_edgetpu.tflite was made; to build one for a Coral "
    "accelerator install it from Coral's apt repository (x86-64 Debian/Ubuntu only: "
    "https://coral.ai/docs/edgetpu/compiler/, then sudo apt install edgetpu-compiler) and export again"
)
RUNTIME_NOTE = (
    "TFLite builtin int8 ops only: runs on ai-edge-litert or tflite-runtime (XNNPACK on the CPU) and, "
    "once compiled by edgetpu_compiler into NAME_edgetpu.tflite, on a Coral Edge TPU"
)


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what to change."""


def resolve_model(path: str | Path) -> Path:
    """A run folder's ``best.keras`` (else ``model.keras``), or a ``.keras`` file itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.keras", "model.keras"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p}: the run folder holds neither best.keras nor model.keras; train it first (deepfer-train fit)")
    if p.suffix == ".keras" and p.is_file():
        return p
    raise FileNotFoundError(f"{p}: not a run folder or a .keras model")


def trained_epochs(model_path: Path) -> dict[str, Any]:
    """Which epoch of its run a ``.keras`` model holds, from the run's ``history.csv`` (and ``swa.json``).

    ``epoch`` (1-based) is what the model card and a later ``fit --init-from`` count as the epochs
    behind the weights: a run whose schedule was stopped early, or whose best epoch came before the
    end, has fewer than its recipe's ``epochs``.
    """
    from train.report import read_history

    run = model_path.parent
    history = run / "history.csv"
    if not history.is_file():
        return {}
    cols = read_history(history)
    acc = cols.get("val_accuracy") or [float("nan")] * len(cols.get("epoch", []))
    info: dict[str, Any] = {"epochs_run": len(acc)}
    if model_path.name == "best.keras" and not np.isnan(acc).all():
        # ModelCheckpoint(save_best_only) keeps the first epoch that reached the maximum.
        info["epoch"] = int(np.nanargmax(acc)) + 1
    elif model_path.name == "model.keras":
        info["epoch"] = len(acc)
    elif model_path.name == "swa.keras" and (run / "swa.json").is_file():
        averaged = json.loads((run / "swa.json").read_text()).get("epochs_averaged") or []
        if averaged:
            info["epoch"], info["averaged_epochs"] = int(max(averaged)), averaged
    return info


def run_recipe(model_path: Path) -> dict[str, Any]:
    """The ``recipe.json`` beside a run's model, or {} when the model stands alone."""
    recipe = model_path.parent / "recipe.json"
    return json.loads(recipe.read_text()) if recipe.is_file() else {}


def calibration_set(data: FaceSet, n: int = DEFAULT_CALIBRATION, seed: int = 0) -> np.ndarray:
    """``n`` training faces, each class represented in proportion to its share (at least one
    face per class present), so rare expressions also shape the int8 activation ranges."""
    if n >= len(data):
        return data.x.copy()
    rng = np.random.default_rng(seed)
    counts = data.class_counts()
    picked: list[np.ndarray] = []
    for c in np.flatnonzero(counts):
        idx = np.flatnonzero(data.y == c)
        k = max(1, int(round(n * counts[c] / len(data))))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    chosen = rng.permutation(np.concatenate(picked))[:n]
    if len(chosen) < n:  # rounding left a few short: top up at random from the rest
        rest = np.setdiff1d(np.arange(len(data)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=n - len(chosen), replace=False)])
    return data.x[np.sort(chosen)]


def _as_nhwc(faces: np.ndarray, channels: int) -> np.ndarray:
    x = np.asarray(faces)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ExportError(f"calibration faces have shape {x.shape} and dtype {x.dtype}; expected (N, S, S[, C]) uint8")
    if x.shape[-1] != channels:
        x = np.repeat(x[..., :1], channels, axis=-1)
    return x


def spanning_calibration(faces: np.ndarray) -> np.ndarray:
    """Calibration faces whose pixels span 0..255 exactly.

    The converter takes the input's quantisation from the calibration range; when
    it spans 0..255 the uint8 input is the raw pixel (scale 1, zero point 0) and
    no grey level is merged. If the real faces do not reach both ends, one extra
    face is added: the first one with its contrast stretched, still a face.
    """
    if faces.min() == 0 and faces.max() == 255:
        return faces
    f = faces[0].astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return faces
    stretched = np.round((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return np.concatenate([faces, stretched[None]])


def representative_dataset(faces: np.ndarray) -> Iterator[list[np.ndarray]]:
    """What the converter calibrates on: one face at a time as float32 raw pixels, the
    same values the Keras model trained on (train.fit casts uint8 faces to float32)."""
    for face in faces:
        yield [face[None].astype(np.float32)]


def prior_shift(class_counts: dict[str, int] | None, power: float) -> np.ndarray | None:
    """Logit shift that undoes class-balancing weights: ``power`` * log(training class prior).

    Training weighted each face by (1 / count of its class) ** ``power``, so the network learned
    posteriors for a prior proportional to prior ** (1 - power). Adding ``power * log(prior)`` to
    the logits gives back posteriors for the training faces' own class mix (logit adjustment,
    Menon et al., 2021): better top-1 and calibration, nothing tuned on validation data.
    """
    if not power or not class_counts:
        return None
    counts = np.array([max(int(class_counts.get(k, 0)), 1) for k in EMOTIONS], np.float64)
    return (power * np.log(counts / counts.sum())).astype(np.float32)


def with_prior_correction(model, shift: np.ndarray):
    """Fold ``shift`` into the bias of the model's final ``logits`` Dense layer (no op is added)."""
    try:
        logits = model.get_layer("logits")
    except ValueError:
        raise ExportError(f"{model.name}: no layer named 'logits' to fold the prior correction into; "
                          "export with --no-prior-correction") from None
    kernel, bias = logits.get_weights()
    if bias.shape != shift.shape:
        raise ExportError(f"{model.name}: logits layer has {bias.shape[0]} outputs, the prior {shift.shape[0]} classes")
    logits.set_weights([kernel, bias + shift])
    return model


def with_softmax(model):
    """The model with a Softmax appended, so the TFLite output is probabilities."""
    import keras

    from train.evaluate import outputs_probabilities

    if outputs_probabilities(model):
        return model
    out = keras.layers.Softmax(name="probabilities")(model.outputs[0])
    # A lone input tensor, not a one-element list: Keras 3 warns when a list-input model is called with a tensor.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, out, name=f"{model.name}_probs")


def flip_average_layer():
    """A Keras layer that takes the probabilities of a batch of 2N faces (N faces, then their N
    mirror images) to the N per-face means."""
    import keras

    class FlipAverage(keras.layers.Layer):
        averages_probabilities = True  # train.evaluate: its output is probabilities when its input is

        def call(self, probs):
            pairs = keras.ops.reshape(probs, (2, -1, probs.shape[-1]))
            return keras.ops.mean(pairs, axis=0)

        def compute_output_shape(self, input_shape):
            return (None, input_shape[-1])

    return FlipAverage(name="flip_average")


def with_flip_average(model):
    """Test-time augmentation inside the graph: the mean of the probabilities of the face and of its
    mirror image, so the daemon runs the bundle unchanged. Both go through the network as one
    batch of two, which XNNPACK runs about 10% faster than two passes of one."""
    import keras

    inp = keras.Input(model.input_shape[1:], name="face")
    both = keras.ops.concatenate([inp, keras.ops.flip(inp, axis=2)], axis=0)
    out = flip_average_layer()(model(both))
    return keras.Model(inp, out, name=f"{model.name}_flip")


def _converter(model, workdir: Path):
    import tensorflow as tf

    try:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    except Exception as exc:  # noqa: BLE001 - fall back on any failure of the Keras 3 bridge
        log.info("from_keras_model failed (%s); converting through a SavedModel", exc)
        saved = workdir / "saved_model"
        model.export(str(saved))
        return tf.lite.TFLiteConverter.from_saved_model(str(saved))


def convert(model, calibration: np.ndarray | None, int8: bool = True) -> bytes:
    """TFLite flatbuffer of ``model``: full-integer (uint8 in/out) with calibration, else float32."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        conv = _converter(model, Path(tmp))
        if int8:
            if calibration is None or len(calibration) == 0:
                raise ExportError("int8 export needs calibration faces (real training faces, e.g. --calibration 500)")
            faces = spanning_calibration(calibration)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: representative_dataset(faces)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.uint8
            conv.inference_output_type = tf.uint8
        captured = io.StringIO()
        # Keras' export prints the traced signature to stdout; keep it out of the CLI's output.
        with contextlib.redirect_stdout(captured):
            try:
                flat = conv.convert()
            except Exception as exc:  # noqa: BLE001 - the converter raises many unrelated types
                raise ExportError(f"TFLite conversion failed: {exc}") from exc
        if captured.getvalue().strip():
            log.debug("converter output:\n%s", captured.getvalue())
    return flat


FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")


def undelegated_interpreter(tflite: Path) -> Any:
    """An allocated interpreter without the default XNNPACK delegate, which would show the graph as
    one opaque DELEGATE op and repack the constant tensors: for reading the model, not for speed."""
    from edge.classifier import interpreter_module

    module, _ = interpreter_module()
    resolver = getattr(getattr(module, "OpResolverType", None), "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
    kwargs = {"experimental_op_resolver_type": resolver} if resolver is not None else {}
    interp = module.Interpreter(model_path=str(tflite), **kwargs)
    interp.allocate_tensors()
    return interp


def float_ops(tflite: Path) -> list[str]:
    """Ops of a TFLite model that take or produce floating-point tensors (empty = integer-only)."""
    interp = undelegated_interpreter(tflite)
    bad = []
    for op in interp._get_ops_details():  # noqa: SLF001 - the only per-op type listing the runtime offers
        types = [np.dtype(t).name for t in list(op["operand_types"]) + list(op["result_types"])]
        if any(t in FLOAT_TYPES for t in types):
            bad.append(f"{op['op_name']}#{op['index']}({', '.join(types)})")
    return bad


def check_integer_only(tflite: Path) -> None:
    bad = float_ops(tflite)
    if bad:
        raise ExportError(
            f"{tflite}: {len(bad)} op(s) still compute in float ({'; '.join(bad[:5])}); the int8 model must be "
            "integer-only for the Edge TPU and XNNPACK int8 — replace the layers behind those ops with ones TFLite "
            "quantises (Conv2D, DepthwiseConv2D, Dense, ReLU6, Add, pooling)"
        )


def measure_latency(clf: Any, faces: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds for one face through ``clf.predict_tensors``, after a warm-up."""
    n = len(faces)
    for i in range(min(10, runs)):
        clf.predict_tensors(faces[i % n : i % n + 1])
    times = []
    for i in range(runs):
        face = faces[i % n : i % n + 1]
        t0 = time.perf_counter()
        clf.predict_tensors(face)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def compile_edgetpu(tflite: Path) -> dict[str, Any]:
    """Run edgetpu_compiler when it is installed; the result goes in the bundle's json."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        log.info(EDGETPU_HINT.replace("NAME", tflite.stem))
        return {"compiled": False, "reason": "edgetpu_compiler not on PATH"}
    try:
        res = subprocess.run(
            [compiler, "-s", "-o", str(tflite.parent), str(tflite)], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("edgetpu_compiler failed to run (%s); the bundle works on the CPU only", exc)
        return {"compiled": False, "reason": str(exc)}
    out = tflite.with_name(tflite.stem + "_edgetpu.tflite")
    if res.returncode != 0 or not out.is_file():
        tail = (res.stdout + res.stderr).strip().splitlines()[-5:]
        log.warning("edgetpu_compiler exited %d: %s; the bundle works on the CPU only", res.returncode, " | ".join(tail))
        return {"compiled": False, "reason": f"exit {res.returncode}"}
    mapped = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", res.stdout)
    log.info("compiled %s for the Edge TPU", out.name)
    return {"compiled": True, "file": out.name, "ops_on_tpu": int(mapped.group(1)) if mapped else None}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPUs"


def float_predictions(model, faces: np.ndarray) -> np.ndarray:
    """Probabilities of the float Keras model (already ending in softmax) on uint8 faces."""
    from train.evaluate import keras_predict_fn

    return keras_predict_fn(model)(faces)


CROP_GEOMETRY = Path(__file__).with_name("crop_geometry.json")


def read_crop_geometry(path: Path = CROP_GEOMETRY) -> dict[str, Any]:
    """The fitted crop geometry bundles get (empty when none was fitted: margin-only framing)."""
    if not path.is_file():
        log.warning("%s is missing: the bundle gets no crop geometry and the daemon frames faces by crop_margin; "
                    "run tools/fit_crop_geometry.py --out %s", path, path)
        return {}
    return dict(json.loads(path.read_text()))


def export(
    model: str | Path,
    out_dir: str | Path,
    name: str,
    calibration_faces: np.ndarray | None,
    int8: bool = True,
    val: FaceSet | None = None,
    version: str | None = None,
    max_drop: float = MAX_INT8_DROP,
    training_data: dict[str, Any] | None = None,
    crop_margin: float = DEFAULT_CROP_MARGIN,
    crop_geometry: dict[str, Any] | None = None,
    latency_runs: int = LATENCY_RUNS,
    report: bool = True,
    flip_tta: bool = False,
    prior_correction: bool = True,
) -> Path:
    """Convert a run's model (or a ``.keras`` file) into ``out_dir/NAME.tflite`` + ``NAME.json``.

    ``calibration_faces``: real training faces (N, S, S) uint8 for int8 calibration.
    ``val``: when given, float and int8 are evaluated on it and the export fails
    (ExportError, nothing written) if int8 top-1 is more than ``max_drop`` points
    below float. With ``report`` the model card (NAME.md) and its confusion-matrix
    and training-curve plots are written beside the bundle. ``flip_tta`` averages each
    face with its mirror image inside the model (twice the compute). ``prior_correction``
    undoes the recipe's class weights in the logits (see :func:`prior_shift`; needs
    ``training_data["class_counts"]``). Returns the .tflite path.
    """
    from edge.classifier import TFLiteClassifier
    from edge.settings import ClassifierSettings
    from train.evaluate import compute_metrics, faces_for, load_keras, summary

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith("_edgetpu"):
        raise ExportError(f"--name {name!r}: use letters, digits, '_', '-', '.' (no path, no _edgetpu suffix)")
    model_path = resolve_model(model)
    recipe = run_recipe(model_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    keras_model = load_keras(model_path)
    power = float(recipe.get("class_weight_power", 0.0) or 0.0)
    shift = prior_shift((training_data or {}).get("class_counts"), power) if prior_correction else None
    if prior_correction and power and shift is None:
        raise ExportError("the prior correction needs the training class counts (the CLI's --data); "
                          "or export with --no-prior-correction")
    if shift is not None:
        keras_model = with_prior_correction(keras_model, shift)
        log.info("prior correction: logits + %.2f * log(training prior) = %s", power, np.round(shift, 3).tolist())
    keras_model = with_softmax(keras_model)
    if flip_tta:
        keras_model = with_flip_average(keras_model)
    _, size, size2, channels = keras_model.input_shape
    if size != size2:
        raise ExportError(f"{model_path}: input {size}x{size2} is not square; the daemon feeds square faces")
    size, channels = int(size), int(channels)
    calib = None
    if int8:
        if calibration_faces is None:
            raise ExportError("int8 export needs calibration faces: real training faces (the CLI's --data, --calibration N)")
        calib = _as_nhwc(calibration_faces, channels)
        if calib.shape[1:3] != (size, size):
            raise ExportError(f"calibration faces are {calib.shape[1]}px but {model_path.name} takes {size}px")
    if val is not None and val.x.shape[1] != size:
        raise ExportError(f"{val.source}: faces are {val.x.shape[1]}px but {model_path.name} takes {size}px")

    log.info("converting %s (%d parameters) to %s TFLite", model_path, keras_model.count_params(), "int8" if int8 else "float32")
    t0 = time.perf_counter()
    flat = convert(keras_model, calib, int8)
    log.info("converted in %.1f s: %d bytes", time.perf_counter() - t0, len(flat))

    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        tflite = staging / f"{name}.tflite"
        tflite.write_bytes(flat)
        if int8:
            check_integer_only(tflite)
        meta: dict[str, Any] = {
            "name": name,
            "version": version or datetime.now(timezone.utc).strftime("%Y.%m.%d"),
            "labels": list(EMOTIONS),
            "input_size": size,
            "channels": channels,
            "normalization": "folded",
            "crop_margin": crop_margin,
            # Detector box -> training framing, per detector (tools/fit_crop_geometry.py); it depends on the
            # detectors and on how FER2013 faces were cropped, not on the network.
            "crop_geometry": read_crop_geometry() if crop_geometry is None else crop_geometry,
            "output": "probabilities",
            "untrained": False,
            "test_time_augmentation": "flip" if flip_tta else "none",
            "prior_correction": (
                {"class_weight_power": power, "logit_shift": [round(float(v), 5) for v in shift]}
                if shift is not None else "none"
            ),
        }
        (staging / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        # Load it exactly as the daemon does: proves the json and the model agree.
        bundle: ModelBundle = load_bundle(tflite)
        clf = TFLiteClassifier(bundle, ClassifierSettings(threads=1))
        qin, qout = clf.input_quantization, clf.output_quantization  # the model's quantisation as the daemon sees it
        if int8 and not qin.is_raw_uint8:
            log.warning("int8 input is %s scale=%g zero=%d, not raw pixels; the daemon rescales it", qin.dtype, qin.scale, qin.zero_point)

        metrics: dict[str, Any] = {}
        full: dict[str, dict[str, Any]] = {}
        agreement = None
        if val is not None:
            faces = faces_for(val, channels)
            p_float = float_predictions(keras_model, faces)
            p_q = clf.predict_tensors(faces)
            kind = "int8" if int8 else "tflite"
            full = {"float": compute_metrics(val.y, p_float), kind: compute_metrics(val.y, p_q)}
            agreement = float((p_float.argmax(1) == p_q.argmax(1)).mean())
            metrics = {k: summary(m) for k, m in full.items()}
            metrics["val_source"] = val.source
            metrics["int8_float_agreement" if int8 else "tflite_float_agreement"] = round(agreement, 4)
            f1, q1 = full["float"]["accuracy"], full[kind]["accuracy"]
            drop = 100.0 * (f1 - q1)
            log.info(
                "val %s: float top-1 %.2f%% | %s top-1 %.2f%% (%+.2f points) | same top-1 class on %.1f%% of faces",
                val.source, 100 * f1, kind, 100 * q1, -drop, 100 * agreement,
            )
            if int8 and drop > max_drop:
                raise ExportError(
                    f"int8 top-1 {100 * q1:.2f}% is {drop:.2f} points below float {100 * f1:.2f}% on {val.source} "
                    f"(allowed {max_drop:g}); nothing was written. Calibrate on more real training faces "
                    "(--calibration 1000), or train longer so BatchNorm statistics settle, then export again"
                )
        latency_faces = calib if calib is not None else faces_for(val, channels) if val is not None else None
        if latency_faces is None:
            latency_faces = np.random.default_rng(0).integers(0, 256, (8, size, size, channels), dtype=np.uint8)
        latency = measure_latency(clf, latency_faces, latency_runs) if latency_runs > 0 else None
        if latency is not None:
            log.info("latency %.2f ms per face (median of %d, 1 thread, %s)", latency, latency_runs, clf.runtime)
        edgetpu = compile_edgetpu(tflite) if int8 else {"compiled": False, "reason": "float model"}

        td = dict(training_data or {})
        if "source" not in td and recipe.get("data"):
            td["source"] = recipe["data"]
        if val is not None:
            td.setdefault("val_source", val.source)
            td.setdefault("n_val", len(val))
        meta.update(
            {
                "input_dtype": qin.dtype.name,
                "input_quantization": {"scale": qin.scale, "zero_point": qin.zero_point},
                "output_dtype": qout.dtype.name,
                "metrics": metrics,
                "training_data": td,
                "calibration": {"n": 0 if calib is None else int(len(calib)), "source": td.get("source", "")},
                "recipe": recipe,
                "model": {"file": model_path.name, "parameters": int(keras_model.count_params()),
                          **trained_epochs(model_path)},
                "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                "latency_ms_per_face": None if latency is None else round(latency, 3),
                "latency_host": f"{_host()}, {clf.runtime}, 1 thread",
                "runtime": RUNTIME_NOTE if int8 else "float32 TFLite model: CPU only (no Edge TPU)",
                "edgetpu": edgetpu,
                "tflite_bytes": tflite.stat().st_size,
                "sha256": _sha256(tflite),
            }
        )
        (staging / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        if report and full:
            _write_card(staging, name, meta, full, agreement, model_path)
        del clf  # release the interpreter's mapping of the file before moving it
        for f in sorted(staging.iterdir()):
            if f.is_file():
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = out / f"{name}.tflite"
    log.info("wrote %s and %s", final, final.with_suffix(".json").name)
    return final


def _write_card(folder: Path, name: str, meta: dict[str, Any], full: dict[str, dict[str, Any]],
                agreement: float | None, model_path: Path) -> None:
    from train import report

    kinds = list(full)
    images = {"confusion": report.plot_confusion({**full[kinds[-1]], "model": name, "kind": kinds[-1]},
                                                 folder / f"{name}_confusion.png").name}
    history = model_path.parent / "history.csv"
    if history.is_file():
        images["curves"] = report.plot_history(history, folder / f"{name}_curves.png").name
    card = report.model_card(
        name=name,
        metrics=full,
        recipe=meta.get("recipe"),
        training_data=meta.get("training_data"),
        eval_data=meta["metrics"].get("val_source", ""),
        images=images,
        latency_ms=meta.get("latency_ms_per_face"),
        agreement=agreement,
        bundle=meta,
    )
    (folder / f"{name}.md").write_text(card)
