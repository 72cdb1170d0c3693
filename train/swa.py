"""Stochastic weight averaging over the last epochs of a run (Izmailov et al., 2018).

The weights at the end of each of the run's last ``swa_epochs`` epochs are
averaged. Points along a flat stretch of training (the low-rate end of a cosine
cycle, or a constant rate: ``--lr-schedule constant``) scatter around a minimum;
their average sits nearer its centre than any one of them and usually
generalises a little better, at no cost at inference (the network is the same).
BatchNorm's moving statistics do not average meaningfully, so they are measured
again afterwards, as a cumulative mean over plain (un-augmented) training faces
(PyTorch's ``swa_utils.update_bn`` does the same over its loader; why plain
faces: :mod:`train.batchnorm`).

Each averaged epoch's weights are saved in ``RUN/swa/``, so a run stopped and
``--resume``-d keeps them. The result is ``RUN/swa.keras``
with ``RUN/swa.json`` (its validation accuracy beside the best single epoch's):
export whichever is better on val.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from train.batchnorm import update_batchnorm

log = logging.getLogger(__name__)

SNAPSHOTS = "swa"  # RUN/swa/epoch_NNN.npz: the weights after epoch NNN (1-based)


def first_epoch(epochs: int, swa_epochs: int) -> int:
    """0-based index of the first epoch whose weights are averaged."""
    return max(0, epochs - swa_epochs)


def _snapshot(run: Path, epoch: int) -> Path:
    return run / SNAPSHOTS / f"epoch_{epoch + 1:03d}.npz"


def callback(run: Path, start_epoch: int):
    """A Keras callback that saves the weights after each epoch from ``start_epoch`` (0-based) on."""
    import keras

    class _Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch < start_epoch:
                return
            path = _snapshot(run, epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, *self.model.get_weights())
            os.replace(tmp, path)  # a run killed mid-write leaves no half snapshot

    return _Snapshot()


def average(run: Path, epochs: int, swa_epochs: int) -> tuple[list[np.ndarray], list[int]]:
    """Mean of the saved snapshots of the last ``swa_epochs`` of ``epochs``; the 0-based epochs used.

    Snapshots are kept per epoch (not as a running sum) so that a schedule grown
    between ``--resume``-s still averages exactly its own last epochs.
    """
    used = [e for e in range(first_epoch(epochs, swa_epochs), epochs) if _snapshot(run, e).is_file()]
    total: list[np.ndarray] | None = None
    for e in used:
        with np.load(_snapshot(run, e)) as z:
            weights = [z[f"arr_{i}"].astype(np.float64) for i in range(len(z.files))]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    return ([t / len(used) for t in total] if total else []), used


def finish(model, run: Path, epochs: int, swa_epochs: int, bn_batches, ds_val,
           best_val_accuracy: float | None) -> Path | None:
    """Load the averaged weights into ``model``, re-measure BatchNorm on ``bn_batches`` (plain
    training faces: :func:`train.batchnorm.plain_batches`), evaluate, save ``swa.keras``."""

    mean, used = average(run, epochs, swa_epochs)
    if not used:
        log.warning("weight average: no snapshots of epochs %d-%d in %s", first_epoch(epochs, swa_epochs) + 1,
                    epochs, run / SNAPSHOTS)
        return None
    model.set_weights([m.astype(w.dtype) for m, w in zip(mean, model.get_weights())])
    batches = update_batchnorm(model, bn_batches)
    values = model.evaluate(ds_val, verbose=0, return_dict=True)
    out = run / "swa.keras"
    model.save(out)
    summary = {
        "epochs_averaged": [e + 1 for e in used],
        "batchnorm_batches": batches,
        "val_accuracy": round(float(values["accuracy"]), 4),
        "val_top2": round(float(values.get("top2", float("nan"))), 4),
        "best_epoch_val_accuracy": None if best_val_accuracy is None else round(best_val_accuracy, 4),
    }
    (run / "swa.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "weight average of epochs %d-%d: val_acc %.4f (best single epoch %s) -> %s",
        used[0] + 1, used[-1] + 1, summary["val_accuracy"],
        "n/a" if best_val_accuracy is None else f"{best_val_accuracy:.4f}", out,
    )
    return out
