"""TFLite flatbuffers: int8 conversion with the representative dataset, and reading the result
back (integer-only check, latency, Edge TPU compilation).

Everything that depends on the TensorFlow converter or the TFLite runtime's interfaces is
here, so a TensorFlow or LiteRT upgrade touches this module alone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from train.calibration import representative_dataset, spanning_calibration
from train.errors import ExportError

log = logging.getLogger(__name__)

LATENCY_RUNS = 300
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
EDGETPU_HINT = (
    "edgetpu_compiler is not on PATH, so no NAME_edgetpu.tflite was made; to build one for a Coral "
    "accelerator install it from Coral's apt repository (x86-64 Debian/Ubuntu only: "
    "https://coral.ai/docs/edgetpu/compiler/, then sudo apt install edgetpu-compiler) and export again"
)


def _converter(model, workdir: Path):
    import tensorflow as tf

    try:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    except Exception as exc:
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
            except Exception as exc:
                raise ExportError(f"TFLite conversion failed: {exc}") from exc
        if captured.getvalue().strip():
            log.debug("converter output:\n%s", captured.getvalue())
    return flat


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
    for op in interp._get_ops_details():
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
