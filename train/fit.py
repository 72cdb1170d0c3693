"""Training: recipe, augmentation pipeline, two-stage transfer learning, resume.

A run folder holds everything needed to reproduce or continue a run:
``recipe.json`` (every setting and the seed), ``backup/`` (Keras
BackupAndRestore state, so ``--resume`` continues mid-schedule),
``best.keras`` (best validation accuracy so far), ``history.csv`` and, at the
end, ``model.keras`` (and ``swa.keras``, the average of the last epochs, when
the recipe's ``swa_epochs`` asks for it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from edge.bundle import load_bundle
from edge.labels import EMOTIONS
from train.batchnorm import DEFAULT_FACES, PlainStatisticsValidation, plain_batches
from train.data import FaceSet, load, split_off, with_seen, with_teacher
from train.runs import HISTORY, read_history

log = logging.getLogger(__name__)


Arch = Literal["fernet", "mobilenetv2", "mobilenetv3small", "mobilenetv3large"]
Schedule = Literal["cosine", "constant"]
# (field, lowest, highest) a recipe may hold.
BOUNDS = (
    ("width", 0.05, 8.0), ("input_size", 16, 512), ("epochs", 1, 10_000), ("head_epochs", 0, 1000),
    ("batch_size", 1, 65_536), ("lr", 0.0, 10.0), ("fine_tune_lr", 0.0, 10.0), ("weight_decay", 0.0, 1.0),
    ("warmup_epochs", 0.0, 1000.0), ("label_smoothing", 0.0, 0.99), ("class_weight_power", 0.0, 2.0),
    ("dropout", 0.0, 0.99), ("bn_momentum", 0.0, 0.9999), ("rotation_deg", 0.0, 180.0), ("zoom", 0.0, 0.9),
    ("translate", 0.0, 0.9), ("brightness", 0.0, 1.0), ("contrast", 0.0, 1.0), ("mixup", 0.0, 100.0),
    ("teacher_weight", 0.0, 1.0), ("seen_share", 0.0, 1.0), ("limit", 0, 10**9), ("holdout", 0.0, 0.9), ("bn_faces", 0, 10**9),
    ("swa_epochs", 0, 10_000),
)


class RecipeError(ValueError):
    """A recipe setting out of its range or choices; the message names the setting."""


@dataclass
class Recipe:
    """Everything that decides a training run; saved as ``recipe.json`` in the run folder."""

    data: str = ""
    val_data: str = ""
    val_split: str = "val"
    arch: Arch = "fernet"
    width: float = 1.0
    input_size: int = 48
    weights: str = "none"  # none | imagenet | PATH (backbone weights, for keras.applications archs)
    epochs: int = 30
    head_epochs: int = 3  # stage 1 (frozen backbone) when weights are pretrained
    batch_size: int = 128
    lr: float = 2e-3
    lr_schedule: Schedule = "cosine"  # cosine: warmup, then cosine decay to 1% | constant: warmup, then lr throughout (for --swa-epochs)
    fine_tune_lr: float = 3e-4
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # 0 = none, 1 = inverse frequency, 0.5 = its square root
    dropout: float = 0.3
    bn_momentum: float = 0.9
    # Augmentation (fractions as Keras layers take them).
    rotation_deg: float = 12.0
    zoom: float = 0.12
    translate: float = 0.08
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    mixup: float = 0.0  # Beta(a, a) of mixup (blend pairs of faces and their targets); 0 = off
    teacher: str = ""  # .npz of soft targets for the training faces (tools/teacher_targets.py): distillation
    teacher_weight: float = 0.5  # share of the teacher's probabilities in the target (the rest: the label)
    # .npz of the training faces as the daemon frames them (tools/seen_faces.py: rendered, detected,
    # cropped by the bundle's geometry), and the share of each batch drawn from it instead of the plain crop.
    seen_faces: str = ""
    seen_share: float = 0.5
    seed: int = 1337
    limit: int = 0  # use at most this many training faces (0 = all); for smoke tests
    init_from: str = ""  # start from this .keras model's or exported .tflite bundle's weights (same architecture): a second, warm-restarted cycle
    holdout: float = 0.1  # fraction held out when no val_data is given
    # Plain training faces BatchNorm statistics are measured on after each epoch (train.batchnorm);
    # 0 = keep the augmented batches' moving averages.
    bn_faces: int = DEFAULT_FACES
    swa_epochs: int = 0  # average the weights of the last N epochs into swa.keras (0 = off); see train.swa
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A recipe is checked where it is defined, so a recipe.json or TOML file is held to the same rules as flags."""
        problems = []
        for name, allowed in (("arch", get_args(Arch)), ("lr_schedule", get_args(Schedule))):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name, low, high in BOUNDS:
            value = getattr(self, name)
            if not low <= value <= high:
                problems.append(f"{name} {value:g}: must be between {low:g} and {high:g}")
        if problems:
            raise RecipeError("recipe " + "; ".join(problems))

    @property
    def pretrained(self) -> bool:
        return self.weights not in ("", "none") and self.arch != "fernet"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Recipe:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)


def load_splits(recipe: Recipe) -> tuple[FaceSet, FaceSet]:
    train = load(recipe.data, "train", recipe.input_size)
    if recipe.teacher:
        train = with_teacher(train, recipe.teacher)
    if recipe.seen_faces:
        train = with_seen(train, recipe.seen_faces)
    if recipe.val_data:
        val = load(recipe.val_data, recipe.val_split, recipe.input_size)
    elif Path(recipe.data).suffix == ".csv":
        val = load(recipe.data, "val", recipe.input_size)
    else:
        train, val = split_off(train, recipe.holdout, recipe.seed)
    if recipe.limit:
        train = train.take(recipe.limit, recipe.seed)
    return train, val


def warm_start_lineage(init_from: Path) -> dict:
    """What a warm-started run continues: the earlier model, and the epochs behind it, for the model card."""

    def epochs_behind(recipe: dict, epoch: int | None = None) -> int:
        # The exported model's own epoch when the bundle records it (a run stopped early, or selected
        # before its end, holds fewer epochs than its recipe planned), else the recipe's plan.
        this_run = int(epoch or recipe.get("epochs", 0))
        return this_run + int((recipe.get("extra") or {}).get("warm_start", {}).get("epochs_before") or 0)

    if init_from.suffix == ".tflite" and init_from.with_suffix(".json").is_file():
        bundle = load_bundle(init_from)
        return {"from": f"{bundle.name} v{bundle.version}",
                "epochs_before": epochs_behind(bundle.meta.get("recipe") or {}, (bundle.meta.get("model") or {}).get("epoch"))}
    recipe = init_from.parent / "recipe.json"
    if recipe.is_file():
        from train.runs import trained_epochs

        return {"from": str(init_from),
                "epochs_before": epochs_behind(json.loads(recipe.read_text()), trained_epochs(init_from).get("epoch"))}
    return {"from": str(init_from), "epochs_before": None}


def data_seed(recipe: Recipe, epochs_done: int) -> int:
    """The seed for shuffling, augmentation and dropout: moved on in a resumed run, which would
    otherwise replay its first epochs' face order and dropout masks in the fresh process."""
    return recipe.seed + 7919 * epochs_done


def class_weights(counts: np.ndarray, power: float) -> dict[int, float]:
    counts = np.maximum(counts.astype(np.float64), 1.0)
    w = (counts.sum() / counts) ** power
    w = w / (w * counts).sum() * counts.sum()  # mean weight per sample stays 1
    return {i: float(v) for i, v in enumerate(w)}


def make_datasets(recipe: Recipe, train: FaceSet, val: FaceSet, epochs_done: int = 0):
    """Training and validation batches (:mod:`train.batches`); ``epochs_done`` > 0 (a resumed run) moves
    the shuffle and augmentation seeds on, so the run does not replay the face order of its first epochs."""
    from train.batches import training_batches, validation_batches

    weights = class_weights(train.class_counts(), recipe.class_weight_power)
    seed = data_seed(recipe, epochs_done)
    return training_batches(recipe, train, weights, seed), validation_batches(val), weights


def build(recipe: Recipe):
    from train.model import build_application, build_fernet

    if recipe.arch == "fernet":
        return build_fernet(recipe.input_size, 1, len(EMOTIONS), recipe.width, recipe.dropout, recipe.bn_momentum), None
    return build_application(
        recipe.arch, recipe.input_size, 1, len(EMOTIONS), recipe.width, recipe.weights, recipe.dropout
    )


LR_SCHEDULES = {"cosine": 0.01, "constant": 1.0}  # the share of the peak rate the schedule ends at


def _schedule(lr: float, total_steps: int, warmup_steps: int, kind: str = "cosine"):
    import keras

    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else lr,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=LR_SCHEDULES[kind],
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _compile(model, recipe: Recipe, lr: float, epochs: int, steps_per_epoch: int) -> None:
    import keras

    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.AdamW(_schedule(lr, epochs * steps_per_epoch, warmup, recipe.lr_schedule), weight_decay=recipe.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.TopKCategoricalAccuracy(2, name="top2")],
    )


def _epochs_done(history: Path) -> int:
    """Epochs the run has finished (rows of its history; a repeated header is not an epoch)."""
    return len(read_history(history).get("epoch", [])) if history.exists() else 0


def _best_so_far(history: Path) -> float | None:
    values = [v for v in read_history(history).get("val_accuracy", []) if not math.isnan(v)] if history.exists() else []
    return max(values) if values else None


class EpochSummary:
    """One readable line per epoch in the log, beside Keras' own progress bar."""

    def __new__(cls, stage: str):
        import keras

        class _Summary(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                log.info(
                    "%s epoch %d: loss %.4f acc %.4f | val_loss %.4f val_acc %.4f val_top2 %.4f",
                    stage, epoch + 1, logs.get("loss", math.nan), logs.get("accuracy", math.nan),
                    logs.get("val_loss", math.nan), logs.get("val_accuracy", math.nan), logs.get("val_top2", math.nan),
                )

        return _Summary()


class EpochClock:
    """Each epoch's wall time into the run's timing.json, so the model card can say how long training took."""

    def __new__(cls, run: Path, stage: str):
        import keras

        from train.runs import record_epoch_time

        class _Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):
                record_epoch_time(run, stage, epoch, time.monotonic() - self.started)

        return _Clock()


def _run_stage(model, recipe: Recipe, run: Path, stage: str, epochs: int, lr: float, ds_train, ds_val, verbose: int,
               bn_batches: list | None = None):
    import keras

    steps = len(ds_train)
    _compile(model, recipe, lr, epochs, steps)
    # With bn_batches, validation runs in the first callback, after the statistics are re-measured.
    callbacks: list[keras.callbacks.Callback] = [PlainStatisticsValidation(bn_batches, ds_val)] if bn_batches else []
    callbacks += [
        keras.callbacks.BackupAndRestore(str(run / "backup" / stage), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            str(run / "best.keras"), monitor="val_accuracy", mode="max", save_best_only=True,
            # After --resume, a worse epoch must not replace the best model saved before the interruption.
            initial_value_threshold=_best_so_far(run / HISTORY),
        ),
        keras.callbacks.CSVLogger(str(run / HISTORY), append=True),
        EpochSummary(stage),
        EpochClock(run, stage),
    ]
    if recipe.swa_epochs and stage != "head":
        from train import swa

        callbacks.append(swa.callback(run, swa.first_epoch(epochs, recipe.swa_epochs)))
    model.fit(ds_train, validation_data=None if bn_batches else ds_val, epochs=epochs, callbacks=callbacks, verbose=verbose)


def fit(recipe: Recipe, run: Path, resume: bool = False, verbose: int = 1) -> Path:
    """Train as ``recipe`` says into ``run``; returns the path of the best model."""
    import keras

    from train.model import freeze_batchnorm

    run.mkdir(parents=True, exist_ok=True)
    saved = run / "recipe.json"
    if resume:
        if not saved.exists():
            raise FileNotFoundError(f"{run}: no recipe.json to resume from; start the run without --resume")
        recipe = Recipe.load(saved)
        log.info("resuming %s from its last checkpoint", run)
    else:
        if (run / "backup").exists():
            raise FileExistsError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
        if recipe.init_from:
            recipe.extra.setdefault("warm_start", warm_start_lineage(Path(recipe.init_from)))
        # Which Keras backend trained it (KERAS_BACKEND): a model from a GPU machine says "jax".
        recipe.extra.setdefault("backend", keras.backend.backend())
        recipe.save(saved)
    keras.utils.set_random_seed(recipe.seed)
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "0")

    train, val = load_splits(recipe)
    log.info("train %d faces %s | val %d faces (%s)", len(train), train.class_counts().tolist(), len(val), val.source)
    epochs_done = _epochs_done(run / HISTORY) if resume else 0
    if epochs_done:
        keras.utils.set_random_seed(data_seed(recipe, epochs_done))
    ds_train, ds_val, weights = make_datasets(recipe, train, val, epochs_done)
    log.info("class weights %s", {EMOTIONS[k]: round(v, 2) for k, v in weights.items()})
    bn_batches = plain_batches(train, recipe.bn_faces, recipe.batch_size, recipe.seed) if recipe.bn_faces > 0 else None

    model, backbone = build(recipe)
    log.info("model %s: %d parameters", model.name, model.count_params())
    if recipe.init_from:
        # Weights only: the new run gets its own optimizer state and learning-rate cycle.
        if Path(recipe.init_from).suffix == ".tflite":
            from train.warmstart import load_tflite_weights

            sample = train.take(min(len(train), 1024), recipe.seed).x[..., None]
            load_tflite_weights(model, Path(recipe.init_from), sample)
        else:
            model.set_weights(keras.models.load_model(recipe.init_from, compile=False).get_weights())
        log.info("weights initialised from %s", recipe.init_from)
    if recipe.pretrained and backbone is not None:
        done_marker = run / "backup" / "head.done"
        if not done_marker.exists():
            backbone.trainable = False
            _run_stage(model, recipe, run, "head", recipe.head_epochs, recipe.lr, ds_train, ds_val, verbose, bn_batches)
            done_marker.parent.mkdir(parents=True, exist_ok=True)
            model.save(run / "head.keras")
            done_marker.touch()
        else:
            model = keras.models.load_model(run / "head.keras")
            backbone = model.get_layer(index=3)
        backbone.trainable = True
        freeze_batchnorm(backbone)
        _run_stage(model, recipe, run, "finetune", recipe.epochs, recipe.fine_tune_lr, ds_train, ds_val, verbose, bn_batches)
    else:
        _run_stage(model, recipe, run, "train", recipe.epochs, recipe.lr, ds_train, ds_val, verbose, bn_batches)
    model.save(run / "model.keras")
    if recipe.swa_epochs:
        from train import swa

        swa.finish(model, run, recipe.epochs, recipe.swa_epochs, bn_batches or [ds_train[i] for i in range(min(100, len(ds_train)))], ds_val,
                   _best_so_far(run / HISTORY))
    best = run / "best.keras"
    return best if best.exists() else run / "model.keras"
