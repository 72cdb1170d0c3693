"""tools/framing_scatter.py: how it judges a rule that predicts the training crop."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from framing_scatter import judge


def crops_for(unit, cx, cy, scale, dx, dy):
    side = scale * unit
    return np.stack([cx + dx * unit - side / 2, cy + dy * unit - side / 2, side], 1)


def test_an_exact_rule_has_no_spread_and_full_overlap():
    rng = np.random.default_rng(0)
    unit, cx, cy = rng.uniform(100, 200, 500), rng.uniform(200, 400, 500), rng.uniform(150, 300, 500)
    log_side, sx, sy, mean_iou, errors = judge(unit, cx, cy, crops_for(unit, cx, cy, 1.11, 0.02, -0.03))
    assert log_side < 1e-9 and sx < 1e-9 and sy < 1e-9
    assert mean_iou > 0.97  # whole pixels only
    assert np.abs(errors).max() < 1e-9


def test_scattered_crops_give_their_spread_back():
    rng = np.random.default_rng(1)
    n = 4000
    unit, cx, cy = rng.uniform(100, 200, n), rng.uniform(200, 400, n), rng.uniform(150, 300, n)
    scale = 1.1 * np.exp(rng.normal(0, 0.15, n))
    crops = crops_for(unit, cx, cy, scale, rng.normal(0, 0.05, n) * scale, 0.0)
    log_side, sx, sy, mean_iou, _ = judge(unit, cx, cy, crops)
    assert abs(log_side - 0.15) < 0.015
    assert 0.035 < sx < 0.065 and sy < 0.02
    assert mean_iou < 0.9
