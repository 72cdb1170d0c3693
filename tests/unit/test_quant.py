"""The quantisation math, one home for the daemon, the exporter and the warm start (edge.quant)."""

import numpy as np
import pytest

from edge.quant import QuantParams, dequantize, dequantize_per_axis, quantize, softmax


def test_raw_uint8_input_passes_through_untouched() -> None:
    pixels = np.array([[0, 17, 255]], np.uint8)
    for q in (QuantParams(1.0, 0, np.dtype(np.uint8)), QuantParams(0.0, 0, np.dtype(np.uint8))):
        assert q.is_raw_uint8 and quantize(pixels, q) is pixels


def test_int8_input_uses_the_models_scale_and_zero_point_and_saturates() -> None:
    q = QuantParams(1.0, -128, np.dtype(np.int8))
    out = quantize(np.array([0, 128, 255], np.uint8), q)
    assert out.dtype == np.int8 and out.tolist() == [-128, 0, 127]
    half = QuantParams(0.5, 0, np.dtype(np.int8))
    assert quantize(np.array([10, 200], np.uint8), half).tolist() == [20, 127]  # 400 saturates at 127


def test_dequantize_is_the_affine_map_back() -> None:
    q = QuantParams(1 / 256, 0, np.dtype(np.uint8))
    assert dequantize(np.array([0, 128, 255], np.uint8), q) == pytest.approx([0.0, 0.5, 255 / 256])
    assert dequantize(np.array([0.25], np.float32), QuantParams(0.0, 0, np.dtype(np.float32))).tolist() == [0.25]


def test_per_channel_weights_dequantise_along_their_axis() -> None:
    w = np.array([[[[1, 2]], [[3, 4]]]], np.int8)  # (1, 2, 1, 2): a depthwise filter, channels last
    got = dequantize_per_axis(w, [0.5, 2.0], [0, 1], axis=3)
    assert got.dtype == np.float32
    assert got[..., 0].ravel().tolist() == [0.5, 1.5] and got[..., 1].ravel().tolist() == [2.0, 6.0]
    assert dequantize_per_axis(w, [0.1], [0]).ravel() == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    assert p.ravel().tolist() == pytest.approx([0.5, 0.5, 0.0])
