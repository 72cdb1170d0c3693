#!/usr/bin/env python3
"""Soft targets from the FER+ re-labelling: each training face's crowd votes (Barsoum et al.,
2016: ten annotators per FER2013 image) as a distribution over the seven FER2013 classes,
written as the .npz that ``deepfer-train fit --teacher`` reads row for row.

    python tools/ferplus_targets.py --data ../shared/data/fer2013/train.npz --out runs/ferplus.npz
    deepfer-train fit ... --teacher runs/ferplus.npz --teacher-weight 0.3

``--teacher ferplus`` (or ``teacher = "ferplus"`` in a recipe) reads the same votes straight from --data.

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

from train.data import DataError, ferplus_votes, vote_targets

log = logging.getLogger("ferplus_targets")

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="training .npz with x, y and ferplus_votes (the one fit will use)")
    ap.add_argument("--out", required=True, type=Path, help="output .npz (probs (N, 7) float32, y)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        votes, y = ferplus_votes(args.data)
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    probs = vote_targets(votes, y)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, probs=probs, y=y, models=np.array([f"FER+ votes of {args.data}"]))
    log.info("wrote %s: %d faces; the FER+ majority is the FER2013 label on %.1f%% of them",
             args.out, len(y), 100 * float((probs.argmax(1) == y).mean()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
