"""Start training from an exported int8 bundle when its float checkpoint is gone.

An exported ``.tflite`` keeps every trained weight, quantised per channel, with
each BatchNorm folded into the convolution before it (``W' = W * g/s``,
``b' = beta - g*m/s``). This module undoes that: the dequantised folded weights
go into the Keras layers of the same architecture, and each BatchNorm is set so
that it changes nothing, in inference mode *and* in training mode. For the
latter its moving statistics are the activations' real per-channel mean and
variance on a sample of training faces, and gamma/beta re-apply them::

    BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta
          = z + bias      with gamma = sqrt(var + eps), beta = mean + bias

so the first training batches see (nearly) the exported model rather than a
network whose every channel has just been renormalised.

The Keras model must be the architecture the bundle was exported from (same
layer names and shapes): ``deepfer-train fit --init-from NAME.tflite`` with the
recipe from the bundle's ``.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.bundle import load_bundle
from edge.quant import dequantize_per_axis

log = logging.getLogger(__name__)

_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


class WarmStartError(ValueError):
    """The .tflite does not match the Keras architecture it is loaded into."""


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    q = detail["quantization_parameters"]
    # quantized_dimension is 3 for depthwise filters (1, kh, kw, ch), 0 for the others.
    return dequantize_per_axis(values, q["scales"], q["zero_points"], int(q.get("quantized_dimension", 0)))


def tflite_weights(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(op, kernel in Keras layout, float bias) for each conv / dense op, in graph order."""
    from train.tflite import undelegated_interpreter

    interp = undelegated_interpreter(path)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():
        if op["op_name"] not in _WEIGHT_OPS:
            continue
        f_idx, b_idx = int(op["inputs"][1]), int(op["inputs"][2]) if len(op["inputs"]) > 2 else -1
        kernel = _dequantize(interp.get_tensor(f_idx), details[f_idx])
        bias = (
            _dequantize(interp.get_tensor(b_idx), details[b_idx])
            if b_idx >= 0 else np.zeros(kernel.shape[0], np.float32)
        )
        if op["op_name"] == "CONV_2D":  # (out, kh, kw, in) -> (kh, kw, in, out)
            kernel = kernel.transpose(1, 2, 3, 0)
        elif op["op_name"] == "DEPTHWISE_CONV_2D":  # (1, kh, kw, ch) -> (kh, kw, ch, 1)
            kernel = kernel[0][:, :, :, None]
        else:  # (units, in) -> (in, units)
            kernel = kernel.T
        out.append((op["op_name"], kernel, bias))
    return out


def load_tflite_weights(model, path: Path, sample: np.ndarray) -> None:
    """Put the weights of the int8 model at ``path`` into ``model`` (see module doc).

    ``sample``: a few hundred training faces (N, S, S, C), for the BatchNorm statistics.
    """
    import keras
    from keras import layers

    weighted = [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense))]
    found = tflite_weights(Path(path))
    fix = "use the arch and width the bundle was trained with (its .json 'recipe')"
    if len(found) != len(weighted):
        raise WarmStartError(f"{path} has {len(found)} conv/dense ops but {model.name} has {len(weighted)} such layers: {fix}")
    bn_after: dict[str, layers.BatchNormalization] = {}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            parent = layer.input._keras_history.operation
            bn_after[parent.name] = layer
    biases: dict[str, np.ndarray] = {}
    for layer, (op, kernel, bias) in zip(weighted, found):
        want = tuple(layer.kernel.shape)
        if tuple(kernel.shape) != want:
            raise WarmStartError(f"{path}: {op} kernel {kernel.shape} does not fit layer {layer.name} {want}: {fix}")
        if layer.name in bn_after:
            layer.kernel.assign(kernel)
            biases[layer.name] = bias
            bn = bn_after[layer.name]
            # Identity for now (moving var 1 - eps), so the activations below are the folded model's.
            bn.set_weights([np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1.0 - bn.epsilon)])
        elif getattr(layer, "use_bias", False):
            layer.set_weights([kernel, bias])
        else:
            raise WarmStartError(f"{path}: layer {layer.name} has neither a bias nor a BatchNorm for the op's bias")

    # Pre-BatchNorm activations, all in one pass, from the model as it now stands.
    names = list(biases)
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    acts = probe.predict(sample.astype(np.float32), batch_size=256, verbose=0)
    for name, act in zip(names, acts if isinstance(acts, list) else [acts]):
        bn = bn_after[name]
        per_channel = act.reshape(-1, act.shape[-1])
        mean, var = per_channel.mean(axis=0), per_channel.var(axis=0)
        bn.set_weights([np.sqrt(var + bn.epsilon), mean + biases[name], mean, var])
    _undo_prior_correction(model, Path(path))
    log.info("weights of %d layers loaded from %s; BatchNorm statistics from %d faces", len(weighted), path, len(sample))


def prior_logit_shift(path: Path) -> np.ndarray | None:
    """The logit shift export's prior correction added to the bundle at ``path`` (its .json), or None."""
    if path.suffix != ".tflite" or not path.with_suffix(".json").is_file():
        return None
    prior = load_bundle(path).meta.get("prior_correction")
    return np.asarray(prior["logit_shift"], np.float64) if isinstance(prior, dict) else None


def _undo_prior_correction(model, path: Path) -> None:
    """Take export's prior correction back out of the logits bias: training re-applies the class
    weights the correction undid, so leaving it in would start from a shifted head."""
    shift = prior_logit_shift(path)
    if shift is None:
        return
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel, bias - shift.astype(bias.dtype)])
    log.info("prior correction of %s taken out of the logits bias", path.name)
