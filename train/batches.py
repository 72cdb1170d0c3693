"""The batches training and validation feed the network: numpy arrays, for any Keras backend.

Keras 3 trains on TensorFlow, JAX or PyTorch. The input pipeline is plain numpy and OpenCV,
so ``KERAS_BACKEND=jax`` trains on a GPU machine that has JAX but no TensorFlow (TensorFlow
is needed only to convert the result to TFLite, on any other machine).

A training batch is ``(faces, targets, weights)``:

- faces: float32 NHWC raw pixels 0..255, augmented as the recipe says (:mod:`train.augment`; the
  network folds the normalisation in, so the daemon feeds the same uint8 values untouched); with
  ``seen_faces``, a share of them as the daemon frames them (:func:`faces_drawn`);
- targets: the label one-hot, blended with the teacher's probabilities when distilling, and
  with another face's by mixup;
- weights: the class weight of the face's own label (sample weights rather than Keras'
  ``class_weight``, which does not combine with soft targets).

Validation batches are ``(faces, one-hot labels)``, never augmented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edge.labels import EMOTIONS
from train.augment import Jitter, augment

if TYPE_CHECKING:
    from train.data import FaceSet
    from train.fit import Recipe

VAL_BATCH = 256


def one_hot(y: np.ndarray, n: int = len(EMOTIONS)) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[np.asarray(y, np.int64)]


def targets(y: np.ndarray, soft: np.ndarray | None, teacher_weight: float) -> np.ndarray:
    """The label one-hot, blended with the teacher's probabilities when there are any.

    The teacher averaged each face with its mirror image, so its targets hold for the flipped
    face too; the other augmentations move a face only slightly.
    """
    hot = one_hot(y)
    return hot if soft is None else ((1.0 - teacher_weight) * hot + teacher_weight * soft).astype(np.float32)


def mixup(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float, rng: np.random.Generator):
    """Blend each face of a batch with another one of the same batch (Zhang et al., 2018).

    One Beta(alpha, alpha) share per face, folded to >= 0.5 so that every blend stays mostly its
    own face; targets and class weights blend by the same share. A regulariser for a small net
    that otherwise learns the training faces by heart.
    """
    n = len(x)
    lam = rng.beta(alpha, alpha, n).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)
    other = rng.permutation(n)
    x = lam[:, None, None, None] * x + (1.0 - lam[:, None, None, None]) * x[other]
    y = lam[:, None] * y + (1.0 - lam[:, None]) * y[other]
    w = lam * w + (1.0 - lam) * w[other]
    return x.astype(np.float32), y.astype(np.float32), w.astype(np.float32)


def faces_drawn(train: FaceSet, rows: np.ndarray, seen_share: float, rng: np.random.Generator) -> np.ndarray:
    """The faces of ``rows``: each, with probability ``seen_share``, as the daemon frames it
    (``train.seen``, when there is one), else its plain crop. Either is then augmented."""
    if train.seen is None or seen_share <= 0.0:
        return train.x[rows]
    pick = rng.random(len(rows)) < seen_share
    return np.where(pick[:, None, None], train.seen[rows], train.x[rows])


def jitter_of(recipe: Recipe) -> Jitter:
    return Jitter(recipe.flip, recipe.rotation_deg, recipe.zoom, recipe.translate, recipe.brightness, recipe.contrast)


def training_batches(recipe: Recipe, train: FaceSet, weights: dict[int, float], seed: int) -> Any:
    """A ``keras.utils.PyDataset`` of shuffled, augmented training batches (:mod:`train.augment`),
    reshuffled every epoch; ``seed`` fixes the order and every random draw."""
    import keras

    w_table = np.array([weights[i] for i in range(len(EMOTIONS))], np.float32)
    jitter = jitter_of(recipe)

    class TrainingBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(train))

        def __len__(self) -> int:
            return -(-len(train) // recipe.batch_size)

        def __getitem__(self, idx: int):
            if not 0 <= idx < len(self):
                raise IndexError(idx)
            rows = self.order[idx * recipe.batch_size : (idx + 1) * recipe.batch_size]
            y = targets(train.y[rows], None if train.soft is None else train.soft[rows], recipe.teacher_weight)
            w = w_table[train.y[rows].astype(np.int64)]
            x = augment(faces_drawn(train, rows, recipe.seen_share, self.rng), jitter, self.rng)[..., None]
            if recipe.mixup:
                x, y, w = mixup(x, y, w, recipe.mixup, self.rng)
            return x, y, w

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(train))

    return TrainingBatches()


def validation_batches(val: FaceSet) -> Any:
    """A ``keras.utils.PyDataset`` of the validation faces as they are, with one-hot labels."""
    import keras

    class ValidationBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self) -> int:
            return -(-len(val) // VAL_BATCH)

        def __getitem__(self, idx: int):
            if not 0 <= idx < len(self):
                raise IndexError(idx)
            s = slice(idx * VAL_BATCH, (idx + 1) * VAL_BATCH)
            return val.x[s, ..., None].astype(np.float32), one_hot(val.y[s])

    return ValidationBatches()
