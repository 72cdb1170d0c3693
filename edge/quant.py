"""Quantisation math of TFLite tensors, as pure functions (cf. pycoral's ``adapters/``).

One home for what the daemon's classifier, the exporter and the warm start all
need: a tensor's (scale, zero point), uint8 pixels into the model's input type,
raw outputs back to floats, per-axis dequantisation of weights, and softmax.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np


class QuantParams(NamedTuple):
    """How a tensor's integers map to real values: real = (q - zero_point) * scale (scale 0: not quantised)."""

    scale: float
    zero_point: int
    dtype: np.dtype

    @classmethod
    def of(cls, detail: Mapping[str, Any]) -> QuantParams:
        """From an interpreter's ``get_input_details()`` / ``get_output_details()`` entry."""
        scale, zero = detail["quantization"]
        return cls(float(scale), int(zero), np.dtype(detail["dtype"]))

    @property
    def is_raw_uint8(self) -> bool:
        """uint8 pixels go in unchanged (the exported bundles' input: scale 1, zero 0, or none)."""
        return self.dtype == np.uint8 and self.scale in (0.0, 1.0) and self.zero_point == 0


def quantize(values: np.ndarray, q: QuantParams) -> np.ndarray:
    """Real values (here uint8 pixels) into the tensor's type, by its own scale and zero point."""
    if q.is_raw_uint8:
        return values
    if q.dtype == np.float32 or q.scale == 0.0:
        return values.astype(q.dtype)
    info = np.iinfo(q.dtype)
    return np.clip(np.round(values.astype(np.float32) / q.scale + q.zero_point), info.min, info.max).astype(q.dtype)


def dequantize(raw: np.ndarray, q: QuantParams) -> np.ndarray:
    """A tensor's integers back to float32 real values."""
    if q.dtype == np.float32 or q.scale == 0.0:
        return raw.astype(np.float32)
    return (raw.astype(np.float32) - q.zero_point) * q.scale


def dequantize_per_axis(values: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0) -> np.ndarray:
    """Weights quantised per output channel (``axis``) or per tensor (one scale) back to float32."""
    scales, zeros = np.asarray(scales, np.float64), np.asarray(zero_points, np.float64)
    if values.dtype == np.float32 or scales.size == 0:
        return values.astype(np.float32)
    shape = [1] * values.ndim
    if scales.size > 1:
        shape[axis] = scales.size
    out: np.ndarray = ((values.astype(np.float64) - zeros.reshape(shape)) * scales.reshape(shape)).astype(np.float32)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out
