"""Emotion classification with an int8 TFLite model (LiteRT, or tflite-runtime as a fallback).

Quantisation parameters come from the model itself, never from constants, so any
bundle exported by ``deepfer-train export`` (int8 or uint8 input/output) works.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import BundleError, ModelBundle
from edge.edgetpu_probe import EDGETPU_LIB, AcceleratorUnavailable
from edge.edgetpu_probe import RUNTIMES as PROBE_RUNTIMES
from edge.edgetpu_probe import probe as probe_edgetpu
from edge.preprocess import Box, frame_face_tensor
from edge.protocols import MissingExtra
from edge.quant import QuantParams, dequantize, quantize, softmax
from edge.settings import ClassifierSettings

log = logging.getLogger(__name__)


def interpreter_module() -> tuple[Any, str]:
    """Return (module with Interpreter and load_delegate, runtime name)."""
    try:
        from ai_edge_litert import interpreter as litert

        return litert, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite

        return tflite, "tflite-runtime"
    except ImportError:
        raise MissingExtra(
            "no TFLite runtime is installed: pip install ai-edge-litert (or tflite-runtime, which needs numpy<2)"
        ) from None


def load_edgetpu_delegate(module: Any, device: str = "") -> Any:
    """Load the Coral delegate; MissingExtra when the runtime or the device is absent."""
    options = {"device": device} if device else {}
    try:
        return module.load_delegate(EDGETPU_LIB, options)
    except (ValueError, OSError, RuntimeError) as exc:
        raise MissingExtra(edgetpu_missing(f"{EDGETPU_LIB}: {exc}")) from None


def edgetpu_missing(detail: str) -> str:
    return (
        f"cannot load the Edge TPU delegate ({detail}); install a Coral runtime matched to the TFLite "
        "version (sudo deploy/install.sh --with-coral; Google's libedgetpu1-std 16.0 is known to crash with "
        "TFLite > 2.11, see README), check the accelerator is plugged in, or set classifier.delegate = \"cpu\""
    )


# TFLite's C++ logger announces its default CPU delegate on every interpreter; no setting of
# LiteRT's Python API or environment turns it off (TF_CPP_MIN_LOG_LEVEL is not read by it).
_RUNTIME_BANNER = re.compile(rb"^INFO: (Created TensorFlow Lite XNNPACK delegate for CPU|Initialized TensorFlow Lite runtime)\.\s*$")


def pass_on_stderr(captured: bytes, fd: int = 2) -> None:
    """Write the captured native stderr back, minus the runtime's start-up banner lines."""
    kept = b"".join(line for line in captured.splitlines(keepends=True) if not _RUNTIME_BANNER.match(line))
    if kept:
        os.write(fd, kept)


@contextmanager
def without_runtime_banner() -> Iterator[None]:
    """Hold back the runtime's start-up banner, which C++ writes straight to file descriptor 2.

    Everything else written to stderr meanwhile (a real runtime error, another
    thread's log line) is passed on when the block ends.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded, closed): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            pass_on_stderr(tmp.read())


class TFLiteClassifier:
    """Classifies face boxes in a grayscale frame; one interpreter, faces run one by one.

    Faces are few per frame (1-3 on a shelf camera); looping keeps the input
    tensor allocated once instead of resizing it for every face count.
    """

    def __init__(self, bundle: ModelBundle, settings: ClassifierSettings, module: Any = None, runtime: str = "") -> None:
        self.bundle = bundle
        self.labels: Sequence[str] = bundle.labels
        if module is None:
            module, runtime = interpreter_module()
        self.runtime = runtime
        model_path, delegates, self.backend = self._choose_backend(module, settings)
        try:
            with without_runtime_banner():
                self._interp = module.Interpreter(
                    model_path=str(model_path), experimental_delegates=delegates or None, num_threads=settings.threads
                )
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"model file {model_path} cannot be loaded by {runtime}: {exc}") from None
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        # The model's own quantisation of its input and output, never constants (see edge.quant).
        self.input_quantization = QuantParams.of(inp)
        self.output_quantization = QuantParams.of(out)
        expected = (1, bundle.input_size, bundle.input_size, bundle.channels)
        actual = tuple(int(v) for v in inp["shape"])
        if actual != expected:
            raise BundleError(f"model {model_path} takes input {actual} but its .json says {expected}; re-export the bundle")
        n_out = int(out["shape"][-1])
        if n_out != len(bundle.labels):
            raise BundleError(
                f"model {model_path} outputs {n_out} classes but its .json lists {len(bundle.labels)} labels "
                f"({', '.join(bundle.labels)}); use the .json exported with this model"
            )
        self._logits = bundle.output == "logits"
        # Seconds per face of the model itself (set tensor, invoke, read back) in the last call.
        self.last_infer_s: float | None = None
        qi = self.input_quantization
        log.info(
            "classifier %s v%s on %s (%s), input %s %s scale=%g zero=%d",
            bundle.name, bundle.version, self.backend, runtime, expected, qi.dtype, qi.scale, qi.zero_point,
        )

    def _choose_backend(self, module: Any, settings: ClassifierSettings) -> tuple[Path, list[Any], str]:
        cpu: tuple[Path, list[Any], str] = (self.bundle.tflite, [], "cpu")
        if settings.delegate == "cpu":
            return cpu
        # The compiled model is checked first: without it the Edge TPU is never
        # used, so its runtime (which may crash on load) is not touched at all.
        compiled = self.bundle.edgetpu_tflite
        if not compiled.is_file():
            msg = (
                f"{compiled} is missing: the Edge TPU runs only models compiled by edgetpu_compiler "
                "(deepfer-train export does it when edgetpu_compiler is on PATH)"
            )
            if settings.delegate == "edgetpu":
                raise BundleError(msg + "; or set classifier.delegate = \"cpu\"")
            log.warning("classifier.delegate = auto: no Edge TPU model (%s); running on the CPU", msg)
            return cpu
        try:
            self._probe_edgetpu(compiled, settings)
            delegate = load_edgetpu_delegate(module, settings.edgetpu_device)
        except (MissingExtra, AcceleratorUnavailable) as exc:
            if settings.delegate == "edgetpu":
                raise
            log.warning("classifier.delegate = auto: no Edge TPU (%s); running on the CPU", exc)
            return cpu
        return compiled, [delegate], "edgetpu"

    def _probe_edgetpu(self, compiled: Path, settings: ClassifierSettings) -> None:
        """Run the delegate in a child first (edge.edgetpu_probe): a runtime that segfaults or hangs must not take the daemon with it."""
        if self.runtime not in PROBE_RUNTIMES:
            return  # an injected module (tests) lives only in this process; a child cannot import it
        result = probe_edgetpu(compiled, settings.edgetpu_device, self.runtime)
        if result.crashed:
            raise AcceleratorUnavailable(result.message)
        if not result.ok:
            raise MissingExtra(edgetpu_missing(result.message))
        log.info("%s", result.message)

    def quantize(self, faces: np.ndarray) -> np.ndarray:
        """uint8 pixels → the model's input dtype, using the model's own scale and zero point."""
        return quantize(faces, self.input_quantization)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        out = dequantize(raw, self.output_quantization)
        return softmax(out) if self._logits else out

    def predict_tensors(self, faces: np.ndarray) -> np.ndarray:
        """Scores for face tensors (N, S, S, C) uint8, as prepared by :mod:`edge.preprocess`."""
        scores = np.empty((len(faces), len(self.labels)), np.float32)
        q = self.quantize(faces)
        infer = 0.0
        for i in range(len(faces)):
            t0 = time.perf_counter()
            self._interp.set_tensor(self._in_index, q[i : i + 1])
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out_index)[0]
            infer += time.perf_counter() - t0
            scores[i] = self.dequantize(raw)
        if len(faces):
            self.last_infer_s = infer / len(faces)
        return scores

    def classify(self, gray_frame: np.ndarray, crops: Sequence[Box]) -> np.ndarray:
        if not crops:
            return np.empty((0, len(self.labels)), np.float32)
        b = self.bundle
        faces = np.stack([frame_face_tensor(gray_frame, square, b.input_size, b.channels) for square in crops])
        return self.predict_tensors(faces)


def create_classifier(bundle: ModelBundle, settings: ClassifierSettings) -> TFLiteClassifier:
    # One backend: the Edge TPU is a delegate of the same interpreter, not a classifier of its own.
    return TFLiteClassifier(bundle, settings)
