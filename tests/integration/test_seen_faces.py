"""Training on faces as the daemon frames them: tools/seen_faces.py makes them, fit draws a share of each batch from them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from seen_faces import main as seen_main  # noqa: E402

from edge.facebench import load_faces  # noqa: E402
from train.batches import faces_drawn  # noqa: E402
from train.data import DataError, FaceSet, with_seen  # noqa: E402
from train.fit import Recipe, RecipeError  # noqa: E402

TRAIN = ROOT.parent / "shared" / "data" / "fer2013" / "train.npz"


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> tuple[FaceSet, Path]:
    out = tmp_path_factory.mktemp("seen") / "seen.npz"
    assert seen_main(["--data", str(TRAIN), "--out", str(out), "--limit", "40"]) == 0
    x, y = load_faces(TRAIN)
    return FaceSet(x[:40], y[:40], str(TRAIN)), out


def test_found_faces_are_the_detectors_crops_and_missed_ones_stay_plain(seen: tuple[FaceSet, Path]) -> None:
    plain, path = seen
    with np.load(path) as z:
        x, found, detector = z["x"], z["found"], str(z["detector"])
    assert detector == "yunet" and x.shape == plain.x.shape and x.dtype == np.uint8
    assert found.mean() >= 0.75  # YuNet finds most rendered faces (the bench: 88% of val)
    np.testing.assert_array_equal(x[~found], plain.x[~found])
    # A found face is the same face, framed a little differently: close to its plain crop, not equal to it.
    corr = [np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1] for a, b in zip(x[found], plain.x[found])]
    assert np.median(corr) > 0.6
    assert sum(not np.array_equal(a, b) for a, b in zip(x[found], plain.x[found])) == found.sum()


def test_seen_faces_attach_row_for_row_and_follow_subsets(seen: tuple[FaceSet, Path]) -> None:
    plain, path = seen
    data = with_seen(plain, path)
    with np.load(path) as z:
        np.testing.assert_array_equal(data.seen, z["x"])
    part = data.take(10, seed=3)
    rows = [int(np.flatnonzero((plain.x == f).all(axis=(1, 2)))[0]) for f in part.x]
    np.testing.assert_array_equal(part.seen, data.seen[rows])


def test_seen_faces_of_other_data_are_refused_with_the_file_named(seen: tuple[FaceSet, Path], tmp_path: Path) -> None:
    plain, path = seen
    other = FaceSet(plain.x, (plain.y + 1) % 7, "other.npz")
    with pytest.raises(DataError, match=r"seen faces .*seen\.npz.*row for row"):
        with_seen(other, path)
    with pytest.raises(DataError, match=r"seen faces .*nope\.npz"):
        with_seen(plain, tmp_path / "nope.npz")
    small = tmp_path / "small.npz"
    np.savez(small, x=np.zeros((40, 24, 24), np.uint8), y=plain.y)
    with pytest.raises(DataError, match=r"expected \(40, 48, 48\) uint8"):
        with_seen(plain, small)


def test_a_batch_draws_the_given_share_from_the_seen_faces() -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((1000, 4, 4), np.uint8)
    data = FaceSet(x, np.zeros(1000, np.int64), "zeros", seen=np.full_like(x, 255))
    rows = np.arange(1000)
    assert not faces_drawn(data, rows, 0.0, rng).any()
    assert (faces_drawn(data, rows, 1.0, rng) == 255).all()
    half = faces_drawn(data, rows, 0.5, rng)
    per_face = half.reshape(1000, -1)
    assert ((per_face == 0).all(1) | (per_face == 255).all(1)).all()  # whole faces, never mixed
    assert 0.45 < (per_face[:, 0] == 255).mean() < 0.55
    np.testing.assert_array_equal(faces_drawn(FaceSet(x, data.y, "plain"), rows, 0.5, rng), x)  # no seen faces: plain


def test_the_recipe_bounds_the_share() -> None:
    with pytest.raises(RecipeError, match=r"seen_share 1\.5"):
        Recipe(seen_share=1.5)
