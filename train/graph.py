"""The Keras graph edits that turn a trained network into the one export converts.

A trained network outputs logits for class-weighted training; the daemon wants the
probabilities of the training faces' own class mix, optionally averaged with the mirror
image's. Each edit is done in the Keras graph, before conversion, so the int8 model
carries it and the daemon runs every bundle the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.labels import EMOTIONS
from train.errors import ExportError


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


def for_export(model: Any, shift: np.ndarray | None = None, flip_tta: bool = False) -> Any:
    """The trained ``model`` as export converts it: prior correction, softmax, then flip averaging.

    The order matters: the shift is a logit shift, so it goes in before the softmax; the flip
    average is of probabilities, after it (its layer says so, and train.evaluate then scores the
    float model without a second softmax).
    """
    if shift is not None:
        model = with_prior_correction(model, shift)
    model = with_softmax(model)
    return with_flip_average(model) if flip_tta else model
