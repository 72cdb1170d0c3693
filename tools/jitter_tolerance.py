#!/usr/bin/env python3
"""How much a model loses when its face crop is scaled or shifted the way a detector's box scatters.

Renders validation faces into camera-like frames (``edge.facebench.render_face``, the same frames
as ``deepfer-edge bench --faces``), cuts each face's exact training square out of the frame, then
the same square scaled by exp(N(0, SCALE_SD)) and shifted by N(0, SHIFT_SD) of its side, and
prints each model's top-1 for every variant, side by side:

    python tools/jitter_tolerance.py --faces ../shared/data/fer2013/val.npz edge/models runs/cand

The spreads default to what YuNet's boxes leave around the training crop once the fitted crop
geometry is applied (log-scale spread 0.13; the shift's robust spread is about 0.06 of the side).
Use validation faces only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.bundle import load_bundle
from edge.classifier import TFLiteClassifier
from edge.facebench import load_faces, render_face
from edge.geometry import Box
from edge.preprocess import face_tensor, frame_face_tensor, to_gray
from edge.settings import ClassifierSettings

SCALE_SD = 0.13
SHIFT_SD = 0.06


def jittered(crop: Box, rng: np.random.Generator, scale_sd: float, shift_sd: float) -> Box:
    """``crop`` (a square) with its side scaled by exp(N(0, scale_sd)) and its centre moved by N(0, shift_sd) sides."""
    side = crop.w * float(np.exp(rng.normal(0.0, scale_sd)))
    cx = crop.x + crop.w / 2 + rng.normal(0.0, shift_sd) * crop.w
    cy = crop.y + crop.h / 2 + rng.normal(0.0, shift_sd) * crop.w
    return Box(round(cx - side / 2), round(cy - side / 2), round(side), round(side))


def variants(scale_sd: float, shift_sd: float) -> dict[str, tuple[float, float]]:
    return {"exact square": (0.0, 0.0), f"scaled (sd {scale_sd:g})": (scale_sd, 0.0),
            f"shifted (sd {shift_sd:g})": (0.0, shift_sd), "scaled and shifted": (scale_sd, shift_sd)}


def tensors(x: np.ndarray, size: int, scale_sd: float, shift_sd: float, seed: int) -> np.ndarray:
    frames, jitter = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    out = []
    for face in x:
        shown = render_face(face, frames)
        out.append(frame_face_tensor(to_gray(shown.image), jittered(shown.crop, jitter, scale_sd, shift_sd), size))
    return np.stack(out)


def top1(predict: Callable[[np.ndarray], np.ndarray], t: np.ndarray, y: np.ndarray) -> float:
    p = np.concatenate([predict(t[i : i + 256]) for i in range(0, len(t), 256)])
    return float((p.argmax(1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="model bundles (.tflite, or the folder holding one)")
    ap.add_argument("--faces", type=Path, required=True, help="validation faces (.npz)")
    ap.add_argument("--limit", type=int, default=0, help="use the first N faces (0 = all)")
    ap.add_argument("--scale-sd", type=float, default=SCALE_SD)
    ap.add_argument("--shift-sd", type=float, default=SHIFT_SD)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    x, y = load_faces(args.faces)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    clfs = [TFLiteClassifier(load_bundle(m), ClassifierSettings()) for m in args.models]
    size = clfs[0].bundle.input_size
    rows = {"plain 48x48 face": np.stack([face_tensor(f, size) for f in x])}
    rows.update({name: tensors(x, size, s, t, args.seed) for name, (s, t) in variants(args.scale_sd, args.shift_sd).items()})
    print(f"{len(x)} faces from {args.faces}; top-1 of each model")
    print("| crop | " + " | ".join(str(m) for m in args.models) + " |")
    print("|---|" + "---|" * len(clfs))
    for name, t in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * top1(c.predict_tensors, t, y):.1f}%" for c in clfs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
