"""edge.facebench's pure parts: the paired framing loss and its standard error."""

import numpy as np
import pytest

from edge.facebench import paired_loss


def test_the_loss_is_the_share_of_faces_only_the_plain_crop_gets_right_minus_the_reverse():
    plain = np.array([1, 1, 1, 0, 0, 1, 1, 1, 0, 1], bool)
    e2e = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1], bool)
    loss, se = paired_loss(plain, e2e)
    assert loss == pytest.approx(10.0)  # 2 lost, 1 gained, of 10
    d = np.array([0, 1, 0, 0, -1, 0, 1, 0, 0, 0], float)
    assert se == pytest.approx(100 * d.std(ddof=1) / np.sqrt(10))


def test_agreeing_readings_have_no_loss_and_no_error():
    right = np.array([1, 0, 1, 1], bool)
    assert paired_loss(right, right) == (0.0, 0.0)
    assert paired_loss(np.array([], bool), np.array([], bool)) == (0.0, 0.0)


def test_the_error_shrinks_as_the_square_root_of_the_faces():
    rng = np.random.default_rng(0)
    plain = rng.random(40000) < 0.7
    e2e = np.where(rng.random(40000) < 0.12, ~plain, plain)
    _, se_all = paired_loss(plain, e2e)
    _, se_quarter = paired_loss(plain[:10000], e2e[:10000])
    assert se_quarter == pytest.approx(2 * se_all, rel=0.1)
