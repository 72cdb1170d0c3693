#!/usr/bin/env python3
"""How far each way of framing a detected face lands from the FER2013 training crop.

Renders FER2013 *training* faces into frames (``edge.facebench.render_face``), runs YuNet at the
daemon's defaults and, for every found face, predicts the training crop from:

- the box (the shipped geometry: its geometric-mean side and centre);
- YuNet's five landmarks (their spread and centroid) and mixes of landmarks and box;
- the Haar cascade run again inside the YuNet box's neighbourhood (Haar's boxes resemble the
  detector that cut FER2013).

Each estimator's scale and offset are fitted (medians) on the first 60% of the faces and judged
on the rest: the spread (half the 16-84 percentile range) of log side ratio and of centre shift
in sides, and the mean IoU with the training crop. The last line is how strongly the box's and
Haar's errors agree: when they agree, the scatter is the training crops' own, which no framing
rule can take out.

    python tools/framing_scatter.py --data ../shared/data/fer2013/train.npz --faces 4000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.detectors import HAAR_CASCADE, YUNET_TOP_K, downscale, haar_cascade_path, shipped_yunet
from edge.facebench import MATCH_IOU, load_faces, render_face
from edge.geometry import Box, iou
from edge.settings import DetectorSettings

HAAR_ROI = 0.9  # half-width of the region Haar searches, in box sides
HAAR_ROI_PX = 120  # the region is shrunk to this width for the cascade


def detect(faces: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per found face: YuNet's box+landmarks (14 numbers), Haar's box in its neighbourhood (NaN if none), the crop."""
    s = DetectorSettings(kind="yunet")
    net = cv2.FaceDetectorYN.create(str(shipped_yunet()), "", (320, 320), s.score_threshold, s.nms_threshold, YUNET_TOP_K)
    cascade_path = haar_cascade_path()
    if cascade_path is None:
        raise SystemExit(f"OpenCV {cv2.__version__} ships no {HAAR_CASCADE}: install `opencv-python-headless<5`")
    cascade = cv2.CascadeClassifier(str(cascade_path))
    rng = np.random.default_rng(seed)
    yunet, haar, crops = [], [], []
    for face in faces:
        shown = render_face(face, rng)
        small, k = downscale(shown.image, s.detect_width)  # as the daemon's YuNet sees the frame
        net.setInputSize((small.shape[1], small.shape[0]))
        _, found = net.detect(small)
        rows = [r[:14] * k for r in (found if found is not None else [])]
        scored = [(iou(Box(*(int(round(v)) for v in r[:4])), shown.crop), r) for r in rows]
        best = max(scored, key=lambda t: t[0], default=(0.0, None))
        if best[1] is None or best[0] < MATCH_IOU:
            continue
        r = best[1]
        yunet.append(r)
        crops.append(shown.crop[:3])
        haar.append(_haar_near(cascade, cv2.cvtColor(shown.image, cv2.COLOR_BGR2GRAY), r[:4]))
    return np.array(yunet), np.array(haar), np.array(crops, np.float64)


def _haar_near(cascade: cv2.CascadeClassifier, gray: np.ndarray, box: np.ndarray) -> list[float]:
    x, y, w, h = box
    g = float(np.sqrt(w * h))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - HAAR_ROI * g)), int(max(0, cy - HAAR_ROI * g))
    x1, y1 = int(min(gray.shape[1], cx + HAAR_ROI * g)), int(min(gray.shape[0], cy + HAAR_ROI * g))
    f = HAAR_ROI_PX / (x1 - x0)
    roi = cv2.resize(gray[y0:y1, x0:x1], (HAAR_ROI_PX, max(1, int(round((y1 - y0) * f)))), interpolation=cv2.INTER_AREA)
    side = int(0.4 * g * f)
    found = [Box(int(x0 + a / f), int(y0 + b / f), int(c / f), int(d / f))
             for a, b, c, d in cascade.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))]
    ref = Box(*(int(round(v)) for v in box))
    best = max(found, key=lambda b: iou(b, ref), default=None)
    return [float(v) for v in best] if best is not None and iou(best, ref) >= MATCH_IOU else [np.nan] * 4


def spread(v: np.ndarray) -> float:
    return float(0.5 * (np.percentile(v, 84) - np.percentile(v, 16)))


def judge(unit: np.ndarray, cx: np.ndarray, cy: np.ndarray, crops: np.ndarray) -> tuple[float, float, float, float, np.ndarray]:
    """Fit side = s*unit, centre = (cx, cy) + (dx, dy)*unit on 60%; on the rest: the spreads of log side
    and of x and y shift, the mean IoU, and the log side errors."""
    side, tx, ty = crops[:, 2], crops[:, 0] + crops[:, 2] / 2, crops[:, 1] + crops[:, 2] / 2
    fit = np.arange(len(unit)) < int(0.6 * len(unit))
    s = np.median((side / unit)[fit])
    dx, dy = np.median(((tx - cx) / unit)[fit]), np.median(((ty - cy) / unit)[fit])
    ps, px, py = s * unit, cx + dx * unit, cy + dy * unit
    rest = ~fit
    ious = [iou(Box(int(round(px[i] - ps[i] / 2)), int(round(py[i] - ps[i] / 2)), int(round(ps[i])), int(round(ps[i]))),
                Box(int(crops[i, 0]), int(crops[i, 1]), int(side[i]), int(side[i]))) for i in np.flatnonzero(rest)]
    return (spread(np.log(ps / side)[rest]), spread(((px - tx) / side)[rest]), spread(((py - ty) / side)[rest]),
            float(np.mean(ious)), np.log(ps / side))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="FER2013 training faces (.npz with x, y): never val or test")
    ap.add_argument("--faces", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    x, _ = load_faces(args.data)
    idx = np.random.default_rng(args.seed).permutation(len(x))[: args.faces]
    yunet, haar, crops = detect(x[idx], args.seed)
    both = ~np.isnan(haar[:, 0])
    print(f"YuNet found {len(yunet)} of {len(idx)} faces; Haar found {int(both.sum())} of those near YuNet's box")
    b, lm = yunet[:, :4], yunet[:, 4:14].reshape(-1, 5, 2)
    geo = np.sqrt(b[:, 2] * b[:, 3])
    bx, by = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    lc = lm.mean(1)
    lm_spread = np.sqrt(((lm - lc[:, None]) ** 2).sum(2).mean(1))
    estimators = {
        "box (shipped)": (geo, bx, by),
        "landmark spread, landmark centroid": (lm_spread, lc[:, 0], lc[:, 1]),
        "box and landmarks, mixed": (np.sqrt(geo * lm_spread), (bx + lc[:, 0]) / 2, (by + lc[:, 1]) / 2),
    }
    print(f"{'estimator':<40} {'faces':>5} {'log side':>9} {'x shift':>8} {'y shift':>8} {'IoU':>6}")
    for name, (unit, cx, cy) in estimators.items():
        ls, sx, sy, mi, _ = judge(unit, cx, cy, crops)
        print(f"{name:<40} {len(unit):>5} {ls:>9.3f} {sx:>8.3f} {sy:>8.3f} {mi:>6.3f}")
    h = haar[both]
    hg = np.sqrt(h[:, 2] * h[:, 3])
    rows = {"box, where Haar also found the face": judge(geo[both], bx[both], by[both], crops[both]),
            "Haar near the box": judge(hg, h[:, 0] + h[:, 2] / 2, h[:, 1] + h[:, 3] / 2, crops[both])}
    for name, (ls, sx, sy, mi, _) in rows.items():
        print(f"{name:<40} {int(both.sum()):>5} {ls:>9.3f} {sx:>8.3f} {sy:>8.3f} {mi:>6.3f}")
    agree = np.corrcoef(rows["box, where Haar also found the face"][4], rows["Haar near the box"][4])[0, 1]
    print(f"correlation of the box's and Haar's log side errors: {agree:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
