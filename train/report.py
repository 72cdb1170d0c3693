"""Plots of training and evaluation: the confusion matrix and the training curves (matplotlib, headless)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from train.runs import read_history

log = logging.getLogger(__name__)


def can_plot() -> bool:
    """Whether matplotlib can be imported (looked up, not imported: that costs a second)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: dict[str, Any], path: Path, title: str | None = None) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1), with counts as support."""
    plt = _pyplot()
    labels = metrics["confusion_matrix"]["labels"]
    cm = np.asarray(metrics["confusion_matrix"]["counts"], np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), [f"{lab} ({int(n)})" for lab, n in zip(labels, rows[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"{metrics.get('model', 'model')} ({metrics.get('kind', '')}): top-1 {metrics['accuracy']:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_history(history_csv: Path, path: Path) -> Path:
    """Loss and accuracy per epoch, train vs validation (stages and resumes laid end to end)."""
    plt = _pyplot()
    h = read_history(history_csv)
    n = len(next(iter(h.values()), []))
    epochs = np.arange(1, n + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "top-1 accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in h:
                ax.plot(epochs, h[prefix + key], style, marker=".", label=(prefix or "train_").rstrip("_"))
        if key == "accuracy" and "val_top2" in h:
            ax.plot(epochs, h["val_top2"], ":", marker=".", label="val top-2")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
