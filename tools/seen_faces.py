#!/usr/bin/env python3
"""FER2013 training faces as the daemon sees them: rendered into a frame, found by the detector, cropped.

Every training face is rendered into a camera-like frame (``edge.facebench.render_face``, the
frames of ``deepfer-edge bench --faces``), the daemon's default detector runs on it, and the box
that matches the face is turned into the model's crop exactly as the daemon does it: the bundle's
crop geometry for that detector (``ModelBundle.geometry_for``), then ``edge.preprocess``. The
result is each face framed the way a camera and the detector frame it, with the detector's real
scatter around FER2013's own crop, which random zoom and shift jitter do not reproduce.

    python tools/seen_faces.py --data ../shared/data/fer2013/train.npz --out runs/seen_train.npz

``deepfer-train fit --seen-faces runs/seen_train.npz --seen-share 0.5`` then trains on these crops
for that share of each batch (``train.data.with_seen``). Faces the detector misses keep their
plain crop (``found`` is False for them). Training faces only: never val or test.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.bundle import load_bundle
from edge.detectors import create_detector
from edge.facebench import best_match, load_faces, render_face
from edge.preprocess import crop_square, face_tensor, frame_face_tensor, to_gray
from edge.protocols import Frame
from edge.settings import EdgeSettings

log = logging.getLogger("seen_faces")


def seen_faces(faces: np.ndarray, settings: EdgeSettings, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(crops (N, S, S) uint8, found (N,) bool, detector name) for ``faces`` (N, 48, 48) uint8."""
    bundle = load_bundle(settings.classifier.model)
    detector = create_detector(settings.detector)
    geometry = bundle.geometry_for(detector.name)
    size = bundle.input_size
    out = np.empty((len(faces), size, size), np.uint8)
    found = np.zeros(len(faces), bool)
    rng = np.random.default_rng(seed)
    for i, face in enumerate(faces):
        shown = render_face(face, rng)
        frame = Frame(image=shown.image, index=i, t_capture=0.0)
        box = best_match([d.box for d in detector.detect(frame)], shown.crop)
        found[i] = box is not None
        framed = face_tensor(face, size) if box is None else frame_face_tensor(to_gray(shown.image), crop_square(box, geometry), size)
        out[i] = framed[..., 0]
    return out, found, detector.name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="FER2013 training faces (.npz with x, y): never val or test")
    ap.add_argument("--out", required=True, type=Path, help="where to write the .npz (x, y, found)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N faces (0 = all; for a quick look)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    x, y = load_faces(args.data)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    t0 = time.monotonic()
    crops, found, detector = seen_faces(x, EdgeSettings(), args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=crops, y=y.astype(np.uint8), found=found, detector=np.array(detector),
                        source=np.array(str(args.data)))
    log.info("%s: %d faces, %s found %d (%.1f%%), %.0f s", args.out, len(x), detector, found.sum(), 100 * found.mean(),
             time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
