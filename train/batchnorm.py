"""BatchNorm statistics measured on plain faces, the kind the daemon feeds the model.

While training, each BatchNorm layer keeps moving averages of its inputs over
*augmented* batches: rotated, zoomed, shifted, brightness- and contrast-jittered
(and, with ``--mixup``, blended) faces. Those statistics are what inference
normalises with, yet the daemon and every evaluation feed plain face crops,
whose activations are distributed differently. Measuring the statistics again
on un-augmented training faces (the training batches' own weights, nothing
learned, no validation face used) closes that gap; on FER2013 PublicTest it
raised fernet's top-1 by 1.2 to 1.9 points (65.1 -> 67.0, 66.2 -> 67.4,
66.7 -> 68.3 for three networks of one lineage). Wu & Johnson, "Rethinking
'Batch' in BatchNorm" (2021), discuss the same train/test mismatch.

``train.fit`` does it after every epoch, before validation, so the epoch that
``best.keras`` keeps is chosen with the statistics it ships with; ``train.swa``
does it for the weight average.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from train.data import FaceSet

DEFAULT_FACES = 12800  # 100 batches of 128: the statistics settle well before that


def _all_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _all_layers(sub)


def update_batchnorm(model, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Measure every trainable BatchNorm layer's moving statistics again, as the plain mean over
    the batches, or the first ``max_batches`` of them (momentum k/(k+1) on batch k; each item's first element is the
    input). Frozen BatchNorm layers (a pretrained backbone's) keep theirs. Returns the batches used."""
    import keras

    bns = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    k = 0
    try:
        for batch in batches:
            if max_batches is not None and k >= max_batches:
                break
            for layer in bns:
                layer.momentum = k / (k + 1.0)
            model(batch[0], training=True)
            k += 1
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return k


def plain_batches(train: FaceSet, faces: int, batch_size: int, seed: int) -> list[tuple[np.ndarray]]:
    """Up to ``faces`` training faces drawn at random, un-augmented, as float32 NHWC batches of raw
    pixels (what the model's folded normalisation expects)."""
    picked = train.take(faces, seed).x
    return [(picked[i : i + batch_size, ..., None].astype(np.float32),) for i in range(0, len(picked), batch_size)]


class PlainStatisticsValidation:
    """Keras callback, first in the list: at each epoch's end it measures the BatchNorm statistics
    on ``batches`` (see :func:`plain_batches`), then evaluates ``ds_val`` and writes ``val_*`` into
    the epoch's logs, where the checkpoint, the CSV log and the epoch summary after it read them.
    ``model.fit`` runs without ``validation_data`` so validation is not done twice."""

    def __new__(cls, batches: list[tuple[np.ndarray]], ds_val):
        import keras

        class _PlainStatisticsValidation(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                update_batchnorm(self.model, batches)
                values = self.model.evaluate(ds_val, verbose=0, return_dict=True)
                if logs is not None:
                    logs.update({f"val_{k}": float(v) for k, v in values.items()})

        return _PlainStatisticsValidation()
