#!/usr/bin/env python3
"""Measure how each face detector's box maps onto the framing of the FER2013 training faces.

Renders FER2013 *training* faces into camera-like frames (``edge.facebench.render_face``: the
face enlarged to 140-220 px with surroundings, so its training crop is known exactly), runs
each detector at its default settings, and fits the ``CropGeometry`` that turns the
detector's box back into that crop (``edge.facebench.fit_geometry``: medians of the side and
centre offset, in units of the box's geometric-mean side).

    python tools/fit_crop_geometry.py --data ../shared/data/fer2013/train.npz \\
        --bundle edge/models/deepfer_fernet_int8.json --out train/crop_geometry.json

``--bundle`` records the result in a bundle's JSON (``crop_geometry``), where the daemon reads
it; ``--out`` keeps it for ``deepfer-train export`` to write into the bundles it makes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.bundle import load_bundle
from edge.detectors import create_detector
from edge.facebench import best_match, fit_geometry, load_faces, mean_iou, render_face
from edge.preprocess import DEFAULT_CROP_MARGIN, CropGeometry
from edge.protocols import Frame
from edge.settings import DetectorSettings

log = logging.getLogger("fit_crop_geometry")
KINDS = ("yunet", "haar")


def measure(faces: np.ndarray, kinds: tuple[str, ...], seed: int) -> dict[str, dict]:
    """Per detector kind: the fitted geometry and how much better than the margin-only framing it is."""
    detectors = {k: create_detector(DetectorSettings(kind=k)) for k in kinds}
    pairs: dict[str, tuple[list, list]] = {k: ([], []) for k in kinds}
    rng = np.random.default_rng(seed)
    for face in faces:
        shown = render_face(face, rng)
        frame = Frame(image=shown.image, index=0, t_capture=0.0)
        for kind, detector in detectors.items():
            box = best_match([d.box for d in detector.detect(frame)], shown.crop)
            if box is not None:
                pairs[kind][0].append(box)
                pairs[kind][1].append(shown.crop)
    out = {}
    margin = CropGeometry.from_margin(DEFAULT_CROP_MARGIN)
    for kind, (boxes, crops) in pairs.items():
        if not boxes:
            raise SystemExit(f"{kind} found none of the {len(faces)} rendered faces; nothing to fit")
        g = fit_geometry(boxes, crops)
        out[kind] = {"geometry": g, "found": len(boxes), "iou_margin": mean_iou(boxes, crops, margin),
                     "iou_fitted": mean_iou(boxes, crops, g)}
        log.info("%s: found %d of %d faces; crop %s; mean IoU with the training crop %.3f (margin-only framing %.3f)",
                 kind, len(boxes), len(faces), dict(g._asdict()), out[kind]["iou_fitted"], out[kind]["iou_margin"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="FER2013 training faces (.npz with x, y): never val or test")
    ap.add_argument("--faces", type=int, default=3000, help="faces to render (default 3000, drawn at random)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bundle", type=Path, help="record the geometry in this bundle .json")
    ap.add_argument("--out", type=Path, help="write the geometry here too (export's default: train/crop_geometry.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    x, _ = load_faces(args.data)
    idx = np.random.default_rng(args.seed).permutation(len(x))[: args.faces]
    result = measure(x[idx], KINDS, args.seed)
    record: dict[str, Any] = {kind: {**r["geometry"]._asdict(), "found": r["found"], "mean_iou": round(r["iou_fitted"], 4)}
              for kind, r in result.items()}
    record["fitted_on"] = f"{len(idx)} faces of {args.data.name} rendered by edge.facebench (tools/fit_crop_geometry.py, seed {args.seed})"
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if args.bundle:
        # Through the bundle's own reader and writer: the geometry is checked as the daemon will check it.
        load_bundle(args.bundle).with_fields(crop_geometry=record).write()
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
