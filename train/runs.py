"""A training run's folder, read back: which model file to use, its recipe, its history.

``deepfer-train fit --out RUN`` writes ``best.keras`` (best validation accuracy),
``model.keras`` (the last epoch), ``swa.keras`` + ``swa.json`` (the weight average),
``recipe.json`` and Keras' ``history.csv``; these are the readers of those files for
export, evaluation and warm starts (fit itself writes them).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

HISTORY = "history.csv"


def resolve_model(path: str | Path) -> Path:
    """A run folder's ``best.keras`` (else ``model.keras``), or a ``.keras`` file itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.keras", "model.keras"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p}: the run folder holds neither best.keras nor model.keras; train it first (deepfer-train fit)")
    if p.suffix == ".keras" and p.is_file():
        return p
    raise FileNotFoundError(f"{p}: not a run folder or a .keras model")


def run_recipe(model_path: Path) -> dict[str, Any]:
    """The ``recipe.json`` beside a run's model, or {} when the model stands alone."""
    recipe = model_path.parent / "recipe.json"
    return json.loads(recipe.read_text()) if recipe.is_file() else {}


TIMING = "timing.json"


def record_epoch_time(run: Path, stage: str, epoch: int, seconds: float) -> None:
    """Note how long one epoch took; an epoch run again after --resume replaces its first try."""
    path = run / TIMING
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(stage, {})[str(epoch)] = round(seconds, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def training_time(model_path: Path) -> tuple[int, float] | None:
    """(epochs, seconds) the run a model file sits in spent training, or None when it kept no timing."""
    path = Path(model_path).parent / TIMING
    if not path.is_file():
        return None
    stages = json.loads(path.read_text()).values()
    times = [float(s) for stage in stages for s in stage.values()]
    return len(times), sum(times)


def history_csv(model_path: Path) -> Path | None:
    """The ``history.csv`` of the run a model file sits in, or None when it stands alone."""
    path = Path(model_path).parent / HISTORY
    return path if path.is_file() else None


def read_history(path: Path) -> dict[str, list[float]]:
    """Columns of Keras' CSVLogger file; rows of every stage and resume, in order.

    The one reader of ``history.csv``: fit (resume, best so far), export (which epoch a model
    holds) and the training-curve plot all count epochs the same way.
    """
    cols: dict[str, list[float]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            if row.get("epoch") == "epoch":  # a header repeated by an appending logger
                continue
            for k, v in row.items():
                if k is None:
                    continue
                try:
                    cols.setdefault(k, []).append(float(v))
                except (TypeError, ValueError):
                    cols.setdefault(k, []).append(math.nan)
    return cols


def epoch_held(model_file: str, val_accuracy: list[float], averaged: list[int] | None = None) -> dict[str, Any]:
    """Which epoch (1-based) a run's model file holds, from the run's per-epoch val accuracy.

    ``best.keras``: ModelCheckpoint(save_best_only) keeps the first epoch that reached the
    maximum; ``model.keras``: the last; ``swa.keras``: the latest of the ``averaged`` epochs.
    """
    info: dict[str, Any] = {"epochs_run": len(val_accuracy)}
    acc = np.asarray(val_accuracy, np.float64)
    if model_file == "best.keras" and len(acc) and not np.isnan(acc).all():
        info["epoch"] = int(np.nanargmax(acc)) + 1
    elif model_file == "model.keras":
        info["epoch"] = len(acc)
    elif model_file == "swa.keras" and averaged:
        info["epoch"], info["averaged_epochs"] = int(max(averaged)), averaged
    return info


def trained_epochs(model_path: Path) -> dict[str, Any]:
    """Which epoch of its run a ``.keras`` model holds, from the run's ``history.csv`` (and ``swa.json``).

    ``epoch`` (1-based) is what the model card and a later ``fit --init-from`` count as the epochs
    behind the weights: a run whose schedule was stopped early, or whose best epoch came before the
    end, has fewer than its recipe's ``epochs``.
    """
    history = history_csv(model_path)
    if history is None:
        return {}
    cols = read_history(history)
    acc = cols.get("val_accuracy") or [float("nan")] * len(cols.get("epoch", []))
    swa = model_path.parent / "swa.json"
    averaged = (json.loads(swa.read_text()).get("epochs_averaged") or []) if model_path.name == "swa.keras" and swa.is_file() else None
    return epoch_held(model_path.name, acc, averaged)
