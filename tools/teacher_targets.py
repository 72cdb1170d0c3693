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
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.data import FaceSet, load  # noqa: E402
from train.evaluate import faces_for, load_predictor, softmax  # noqa: E402

log = logging.getLogger("teacher_targets")


def training_space(probs: np.ndarray, model: Path) -> np.ndarray:
    """Undo a bundle's prior correction: log p - shift, renormalised."""
    meta = model.with_suffix(".json")
    prior = json.loads(meta.read_text()).get("prior_correction") if model.suffix == ".tflite" and meta.is_file() else None
    if not isinstance(prior, dict):
        return probs
    return softmax(np.log(np.maximum(probs, 1e-12)) - np.asarray(prior["logit_shift"], np.float64))


def teacher_probs(models: list[Path], data: FaceSet) -> np.ndarray:
    total = None
    for path in models:
        pred = load_predictor(path)
        x = faces_for(data, pred.channels)
        p = (pred.predict(x) + pred.predict(np.ascontiguousarray(x[:, :, ::-1]))) / 2
        p = training_space(p.astype(np.float64), path)
        total = p if total is None else total + p
        log.info("%s: top-1 %.4f on %d faces", path, float((p.argmax(1) == data.y).mean()), len(data))
    return (total / len(models)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help=".keras models or bundle .tflite files")
    ap.add_argument("--data", required=True, help="the training data fit will use (same file, same rows)")
    ap.add_argument("--out", required=True, type=Path, help="output .npz (probs (N, 7) float32, y)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = load(args.data, "train", 48)
    probs = teacher_probs(args.models, data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, probs=probs, y=data.y, models=np.array([str(m) for m in args.models]))
    agree = float((probs.argmax(1) == data.y).mean())
    log.info("wrote %s: %d faces, teacher top-1 on them %.4f", args.out, len(probs), agree)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
