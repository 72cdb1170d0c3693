"""tools/jitter_tolerance.py: the crop perturbations it scores models on."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from jitter_tolerance import jittered

from edge.geometry import Box


def test_no_spread_keeps_the_square():
    assert jittered(Box(100, 80, 160, 160), np.random.default_rng(0), 0.0, 0.0) == Box(100, 80, 160, 160)


def test_the_spreads_are_those_asked_for_and_the_crop_stays_square():
    rng = np.random.default_rng(1)
    crop = Box(200, 150, 200, 200)
    boxes = [jittered(crop, rng, 0.13, 0.06) for _ in range(4000)]
    assert all(b.w == b.h for b in boxes)
    log_scale = np.log([b.w / crop.w for b in boxes])
    shift_x = np.array([(b.x + b.w / 2 - 300) / crop.w for b in boxes])
    assert log_scale.std() == pytest.approx(0.13, abs=0.01) and abs(log_scale.mean()) < 0.01
    assert shift_x.std() == pytest.approx(0.06, abs=0.006) and abs(shift_x.mean()) < 0.005
