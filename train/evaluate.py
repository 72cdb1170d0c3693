"""Evaluation of a trained model on a labelled face set: metrics in numpy, files for humans.

A model is either a Keras ``.keras`` file (float, as trained) or an exported
``.tflite`` bundle. The bundle is run through the daemon's own
:class:`edge.classifier.TFLiteClassifier`, so the numbers measure the code path
that serves predictions, quantisation included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import load_bundle
from edge.labels import EMOTIONS
from edge.quant import softmax
from train.data import FaceSet

log = logging.getLogger(__name__)

ECE_BINS = 15
PredictFn = Callable[[np.ndarray], np.ndarray]  # (N, S, S, C) uint8 faces -> (N, classes) probabilities


@dataclass
class Predictor:
    """A loaded model: ``predict`` maps uint8 faces (N, S, S, C) to class probabilities."""

    predict: PredictFn
    kind: str  # "keras-float" | "tflite-int8" | "tflite-float" | "function"
    input_size: int
    channels: int
    name: str
    path: Path | None = None


def outputs_probabilities(model: Any) -> bool:
    """True when a Keras model ends in a softmax (exported wrappers do; trained models emit logits)."""

    return _emits_probabilities(model.layers[-1])


def _emits_probabilities(layer: Any) -> bool:
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return True
    if isinstance(layer, keras.Model):
        return outputs_probabilities(layer)
    if isinstance(layer, keras.layers.Average) or getattr(layer, "averages_probabilities", False):  # export's flip TTA
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        return all(_emits_probabilities(t._keras_history.operation) for t in inputs)
    act = getattr(layer, "activation", None)
    return act is keras.activations.softmax or getattr(act, "__name__", "") == "softmax"


def keras_predict_fn(model: Any, batch_size: int = 256) -> PredictFn:
    """Float predictions of a Keras model on raw uint8 faces (the graph normalises them itself)."""
    probs_out = outputs_probabilities(model)

    def predict(faces: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(faces), batch_size):
            # Direct calls skip predict()'s tf.data set-up, which dominates on small sets.
            batch = np.asarray(faces[i : i + batch_size], np.float32)
            y = model(batch, training=False)
            out.append(np.asarray(y.numpy() if hasattr(y, "numpy") else y, np.float32))
        scores = np.concatenate(out) if out else np.empty((0, len(EMOTIONS)), np.float32)
        return scores if probs_out else softmax(scores)

    return predict


def load_keras(path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{path}: cannot load as a Keras model ({exc})") from None


def load_predictor(path: str | Path, threads: int = 1) -> Predictor:
    """Load a ``.keras`` model or a ``.tflite`` bundle (with its ``.json``) for evaluation."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such model file; pass a .keras model or a bundle's .tflite")
    if p.suffix == ".keras":
        model = load_keras(p)
        _, size, _, channels = model.input_shape
        return Predictor(keras_predict_fn(model), "keras-float", int(size), int(channels), p.stem, p)
    if p.suffix in (".tflite", ".json"):
        from edge.classifier import TFLiteClassifier
        from edge.settings import ClassifierSettings

        bundle = load_bundle(p)
        clf = TFLiteClassifier(bundle, ClassifierSettings(threads=threads))
        kind = "tflite-float" if clf.quantize(np.zeros((1, 1), np.uint8)).dtype == np.float32 else "tflite-int8"
        return Predictor(clf.predict_tensors, kind, bundle.input_size, bundle.channels, bundle.name, bundle.tflite)
    raise FileNotFoundError(f"{p}: unknown model type {p.suffix!r}; pass a .keras model or a bundle's .tflite")


def faces_for(data: FaceSet, channels: int) -> np.ndarray:
    """FaceSet images (N, S, S) as the network's (N, S, S, C) uint8 input."""
    x = data.x[..., None]
    return np.repeat(x, channels, axis=-1) if channels > 1 else x


# --- metrics --------------------------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    idx = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| x bin share."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += abs(correct[m].mean() - conf[m].mean()) * m.mean()
    return float(ece)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, labels: tuple[str, ...] = EMOTIONS) -> dict[str, Any]:
    """Classification metrics of probabilities ``probs`` (N, C) against integer labels ``y_true``.

    Macro averages run over the classes present in the labels or the predictions
    (as scikit-learn does without ``labels=``), so a split lacking a class is not
    charged a zero for it; weighted averages weight each class by its support.
    """
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    n_cls = len(labels)
    if probs.ndim != 2 or probs.shape != (len(y_true), n_cls):
        raise ValueError(f"scores have shape {probs.shape}; expected ({len(y_true)}, {n_cls})")
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, pred, n_cls)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    p_true = probs[np.arange(len(y_true)), y_true]

    def avg(v: np.ndarray, w: np.ndarray | None) -> float:
        if w is None:
            return float(v[present].mean()) if present.any() else 0.0
        return float((v * w).sum() / w.sum()) if w.sum() else 0.0

    return {
        "n": len(y_true),
        "accuracy": float((pred == y_true).mean()),
        "top2_accuracy": float((top2 == y_true[:, None]).any(axis=1).mean()),
        "macro": {"precision": avg(precision, None), "recall": avg(recall, None), "f1": avg(f1, None)},
        "weighted": {"precision": avg(precision, support), "recall": avg(recall, support), "f1": avg(f1, support)},
        "per_class": {
            labels[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in range(n_cls)
        },
        "confusion_matrix": {"labels": list(labels), "counts": cm.tolist()},
        "ece": expected_calibration_error(y_true, probs.astype(np.float64)),
        "nll": float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()),
    }


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The few numbers a bundle's .json carries: top1, top2, macro_f1, ece, n."""
    return {
        "top1": round(metrics["accuracy"], 4),
        "top2": round(metrics["top2_accuracy"], 4),
        "macro_f1": round(metrics["macro"]["f1"], 4),
        "ece": round(metrics["ece"], 4),
        "n": metrics["n"],
    }


def evaluate(model: str | Path | PredictFn | Predictor, data: FaceSet, channels: int = 1) -> dict[str, Any]:
    """Metrics of ``model`` (a .keras/.tflite path, a Predictor, or a predict function) on ``data``.

    The returned dict also carries ``probs`` (N, C) for callers that compare
    models face by face; :func:`write_metrics` leaves it out of the JSON.
    """
    pred = model if isinstance(model, Predictor) else None
    if pred is None and isinstance(model, (str, Path)):
        pred = load_predictor(model)
    if pred is not None:
        if data.x.shape[1] != pred.input_size:
            raise ValueError(
                f"{data.source}: faces are {data.x.shape[1]}px but {pred.name} takes {pred.input_size}px; "
                "load the data with the model's input size"
            )
        fn, channels, kind, name = pred.predict, pred.channels, pred.kind, pred.name
    else:
        fn, kind, name = model, "function", getattr(model, "__name__", "model")  # type: ignore[assignment]
    probs = np.asarray(fn(faces_for(data, channels)), np.float32)
    metrics = compute_metrics(data.y, probs)
    metrics.update({"model": name, "kind": kind, "data": data.source, "probs": probs})
    log.info(
        "%s (%s) on %s: top1 %.4f top2 %.4f macro-F1 %.4f ECE %.4f (n=%d)",
        name, kind, data.source, metrics["accuracy"], metrics["top2_accuracy"], metrics["macro"]["f1"],
        metrics["ece"], metrics["n"],
    )
    return metrics


def jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "probs"}


def write_metrics(metrics: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
    return path


def format_table(metrics: dict[str, Any]) -> str:
    """A compact plain-text table: headline numbers, then one row per class."""
    lines = [
        f"{metrics.get('model', 'model')} ({metrics.get('kind', '?')}) on {metrics.get('data', '?')}, n={metrics['n']}",
        f"top-1 {metrics['accuracy']:.4f}  top-2 {metrics['top2_accuracy']:.4f}  "
        f"macro-F1 {metrics['macro']['f1']:.4f}  weighted-F1 {metrics['weighted']['f1']:.4f}  ECE {metrics['ece']:.4f}",
        f"{'class':<10}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}",
    ]
    for label, row in metrics["per_class"].items():
        lines.append(f"{label:<10}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>8.3f}{row['support']:>9d}")
    return "\n".join(lines)


def evaluate_to_dir(model: str | Path | Predictor, data: FaceSet, out_dir: Path) -> dict[str, Any]:
    """Evaluate and write metrics.json, confusion_matrix.png, training_curves.png (when the
    model sits in a run folder with history.csv) and model_card.md into ``out_dir``."""
    from train import report
    from train.card import model_card
    from train.runs import history_csv

    pred = model if isinstance(model, Predictor) else load_predictor(model)
    if pred.path is None:
        raise ValueError("evaluate_to_dir needs a model loaded from a file")
    model = pred.path
    metrics = evaluate(pred, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics, out_dir / "metrics.json")
    images: dict[str, Path] = {}
    run_dir = Path(model).parent
    history = history_csv(Path(model))
    if report.can_plot():
        images["confusion"] = report.plot_confusion(metrics, out_dir / "confusion_matrix.png")
        if history is not None:
            images["curves"] = report.plot_history(history, out_dir / "training_curves.png")
    else:
        # Evaluating a .tflite bundle needs no [train] extra; the plots are what it would add.
        log.warning("matplotlib is not installed: %s gets metrics.json and model_card.md without plots "
                    "(pip install matplotlib, or 'deepfer[train]', for them)", out_dir)
    recipe = _read_json(run_dir / "recipe.json")
    bundle_meta = load_bundle(model).meta if Path(model).suffix == ".tflite" else {}
    card = model_card(
        name=pred.name,
        metrics={pred.kind: metrics},
        recipe=recipe or bundle_meta.get("recipe"),
        training_data=bundle_meta.get("training_data") or ({"source": recipe.get("data")} if recipe else None),
        eval_data=data.source,
        images={k: v.name for k, v in images.items()},
        latency_ms=bundle_meta.get("latency_ms_per_face"),
    )
    (out_dir / "model_card.md").write_text(card)
    return metrics


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        log.warning("%s is not valid JSON; left out of the model card", path)
        return {}
