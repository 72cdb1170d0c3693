#!/usr/bin/env python3
"""Soft targets from the FER+ re-labelling: each training face's crowd votes (Barsoum et al.,
2016: ten annotators per FER2013 image) as a distribution over the seven FER2013 classes,
written as the .npz that ``deepfer-train fit --teacher`` reads row for row.

    python tools/ferplus_targets.py --data ../shared/data/fer2013/train.npz --out runs/ferplus.npz
    deepfer-train fit ... --teacher runs/ferplus.npz --teacher-weight 0.3

FER+'s contempt, unknown and not-a-face votes have no FER2013 class and are dropped; a face with
no vote left keeps its one-hot label. At ``--teacher-weight`` below 0.5 the label still decides
every target's top class: the votes only say which other expressions a face resembles.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.labels import EMOTIONS  # noqa: E402

log = logging.getLogger("ferplus_targets")

# FER+ vote columns, in the order of fer2013new.csv (and of the npz's ferplus_votes).
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
TO_FER2013 = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
              "surprise": "surprise", "neutral": "neutral"}


def vote_targets(votes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 10) FER+ vote counts -> (N, 7) probabilities in FER2013 order (one-hot ``y`` where no vote maps)."""
    votes = np.asarray(votes, np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise ValueError(f"FER+ votes have shape {votes.shape}; expected (N, {len(FERPLUS_COLUMNS)})")
    ours = votes[:, [FERPLUS_COLUMNS.index(TO_FER2013[e]) for e in EMOTIONS]]
    total = ours.sum(axis=1, keepdims=True)
    onehot = np.eye(len(EMOTIONS))[np.asarray(y, np.int64)]
    return np.where(total > 0, ours / np.maximum(total, 1.0), onehot).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="training .npz with x, y and ferplus_votes (the one fit will use)")
    ap.add_argument("--out", required=True, type=Path, help="output .npz (probs (N, 7) float32, y)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with np.load(args.data) as z:
            y, votes = z["y"], z["ferplus_votes"]
    except KeyError:
        raise SystemExit(f"{args.data}: no 'ferplus_votes' array (FER+ vote counts, FER+ column order "
                         f"{', '.join(FERPLUS_COLUMNS)}); only the FER2013 .npz files carry them") from None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{args.data}: not a readable .npz ({exc})") from None
    probs = vote_targets(votes, y)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, probs=probs, y=y, models=np.array([f"FER+ votes of {args.data}"]))
    log.info("wrote %s: %d faces; the FER+ majority is the FER2013 label on %.1f%% of them",
             args.out, len(y), 100 * float((probs.argmax(1) == y).mean()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
