"""tools/pack_faces.py: a FER2013-style .npz through the PNG mosaic and back, bit for bit."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from pack_faces import main, mosaic, pack, unmosaic, unpack


def test_every_array_comes_back_equal_with_its_dtype(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.integers(0, 256, (301, 48, 48), dtype=np.uint8), "y": rng.integers(0, 7, 301).astype(np.uint8),
              "ferplus_votes": rng.integers(0, 10, (301, 10)).astype(np.uint8), "lossless": rng.random(301) < 0.5}
    np.savez(tmp_path / "train.npz", **arrays)
    png, rest = pack(tmp_path / "train.npz", tmp_path / "packed" / "train")
    assert png.suffix == ".png" and rest.name == "train.rest.npz"
    back = np.load(unpack(tmp_path / "packed" / "train", tmp_path / "again.npz"))
    assert sorted(back.files) == sorted(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_the_mosaic_pads_only_the_last_row():
    faces = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    image = mosaic(faces, columns=2)
    assert image.shape == (3 * 4, 2 * 3)
    np.testing.assert_array_equal(image[8:, 3:], 0)  # the sixth, missing face
    np.testing.assert_array_equal(unmosaic(image, 5, 4, 3), faces)


def test_unpack_without_pack_says_what_to_do(tmp_path: Path):
    with pytest.raises(SystemExit, match="run `pack` first"):
        main(["unpack", str(tmp_path / "nothing"), str(tmp_path / "x.npz")])
