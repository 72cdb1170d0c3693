#!/usr/bin/env python3
"""Soft targets for knowledge distillation: the mean class probabilities of one or more models
(each averaged with its own mirror image) on every face of a training set, written as an .npz
that ``deepfer-train fit --teacher`` reads row for row.

    python tools/teacher_targets.py --data train.npz --out runs/teacher.npz \\
        edge/models/deepfer_fernet_int8.tflite runs/mix4/best.keras

Probabilities are written in the training space: a bundle's prior correction (which export adds
to the logits) is taken back out, so the student learns what it is trained to output and export
applies the correction once more.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.data import FaceSet, load
from train.evaluate import faces_for, load_predictor, softmax
from train.warmstart import prior_logit_shift

log = logging.getLogger("teacher_targets")


def training_space(probs: np.ndarray, model: Path) -> np.ndarray:
    """Undo a bundle's prior correction: log p - shift, renormalised."""
    shift = prior_logit_shift(model)
    return probs if shift is None else softmax(np.log(np.maximum(probs, 1e-12)) - shift)


def teacher_probs(models: list[Path], data_path: str) -> tuple[FaceSet, np.ndarray]:
    """The training faces (at the models' input size) and the teachers' mean probabilities on them."""
    total: np.ndarray | None = None
    data: FaceSet | None = None
    for path in models:
        pred = load_predictor(path)
        if data is None:
            data = load(data_path, "train", pred.input_size)
        elif data.x.shape[1] != pred.input_size:
            raise SystemExit(f"{path} takes {pred.input_size}px faces but {models[0]} takes {data.x.shape[1]}px; "
                             "teachers of one size only")
        x = faces_for(data, pred.channels)
        p = (pred.predict(x) + pred.predict(np.ascontiguousarray(x[:, :, ::-1]))) / 2
        p = training_space(p.astype(np.float64), path)
        total = p if total is None else total + p
        log.info("%s: top-1 %.4f on %d faces", path, float((p.argmax(1) == data.y).mean()), len(data))
    assert data is not None and total is not None  # main's argparse takes one model at least
    return data, (total / len(models)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help=".keras models or bundle .tflite files")
    ap.add_argument("--data", required=True, help="the training data fit will use (same file, same rows)")
    ap.add_argument("--out", required=True, type=Path, help="output .npz (probs (N, 7) float32, y)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, probs = teacher_probs(args.models, args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, probs=probs, y=data.y, models=np.array([str(m) for m in args.models]))
    agree = float((probs.argmax(1) == data.y).mean())
    log.info("wrote %s: %d faces, teacher top-1 on them %.4f", args.out, len(probs), agree)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
