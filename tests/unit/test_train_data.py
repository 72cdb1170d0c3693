"""Training data loaders (train/data.py): the three formats, their error messages, class weights.

No TensorFlow needed: the loaders and the recipe helpers are numpy + OpenCV.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.labels import EMOTIONS
from edge.preprocess import face_tensor
from train.data import DataError, FaceSet, load, load_csv, load_folder, load_npz, split_off
from train.fit import class_weights


def _face(seed: int, side: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def _write_csv(path: Path, rows: list[tuple[object, object, str]], header=("emotion", "pixels", "Usage")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow(row[: len(header)])
    return path


def _pixels(img: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in img.ravel())


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_splits_labels_and_pixels(tmp_path: Path) -> None:
    faces = [_face(i) for i in range(6)]
    usage = ["Training", "Training", "Training", "PublicTest", "PublicTest", "PrivateTest"]
    labels = [3, 0, 6, 5, 1, 2]
    path = _write_csv(tmp_path / "fer2013.csv", [(lab, _pixels(f), u) for lab, f, u in zip(labels, faces, usage)])

    train = load(path, "train")
    assert train.x.dtype == np.uint8 and train.x.shape == (3, 48, 48)
    assert train.y.tolist() == [3, 0, 6]
    assert np.array_equal(train.x, np.stack(faces[:3]))  # pixels survive the text round trip exactly
    val = load(path, "val")
    assert val.y.tolist() == [5, 1] and np.array_equal(val.x[1], faces[4])
    test = load_csv(path, "test")
    assert test.y.tolist() == [2]


def test_csv_other_input_size_goes_through_face_tensor(tmp_path: Path) -> None:
    face = _face(7)
    path = _write_csv(tmp_path / "f.csv", [(4, _pixels(face), "Training")])
    got = load(path, "train", size=64)
    assert got.x.shape == (1, 64, 64)
    assert np.array_equal(got.x[0], face_tensor(face, 64)[:, :, 0])


def test_csv_without_usage_column_is_one_split(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "f.csv", [(1, _pixels(_face(1))), (2, _pixels(_face(2)))], header=("emotion", "pixels"))
    assert load(path, "train").y.tolist() == [1, 2]


def test_csv_corrupt_row_names_file_and_row(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "f.csv", [(3, _pixels(_face(1)), "Training"), ("happy", _pixels(_face(2)), "Training")])
    with pytest.raises(DataError, match=rf"{path}:3: corrupt row"):
        load(path, "train")
    path2 = _write_csv(tmp_path / "g.csv", [(3, "12 x 40", "Training")])
    with pytest.raises(DataError, match=rf"{path2}:2: corrupt row"):
        load(path2, "train")


def test_csv_wrong_pixel_count(tmp_path: Path) -> None:
    short = " ".join(["10"] * 2303)
    path = _write_csv(tmp_path / "f.csv", [(0, _pixels(_face(1)), "Training"), (0, short, "Training")])
    with pytest.raises(DataError, match=rf"{path}:3: 2303 pixels is not a square image"):
        load(path, "train")


def test_csv_out_of_range_values(tmp_path: Path) -> None:
    bad_px = _write_csv(tmp_path / "p.csv", [(0, " ".join(["300"] * 4), "Training")])
    with pytest.raises(DataError, match=rf"{bad_px}:2: pixel values must lie in 0..255"):
        load(bad_px, "train")
    bad_label = _write_csv(tmp_path / "l.csv", [(7, _pixels(_face(0)), "Training")])
    with pytest.raises(DataError, match=rf"{bad_label}:2: emotion 7 is outside 0..6"):
        load(bad_label, "train")


def test_csv_no_rows_for_split(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "f.csv", [(0, _pixels(_face(1)), "Training")])
    with pytest.raises(DataError, match=r"no rows for split 'val' \(Usage in \('PublicTest',\)\)"):
        load(path, "val")


def test_csv_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("label,image\n1,2 3\n")
    with pytest.raises(DataError, match="expected a header with columns emotion,pixels"):
        load(path, "train")


# --- npz ------------------------------------------------------------------------------------------


def test_npz_happy_paths(tmp_path: Path) -> None:
    x = np.stack([_face(i) for i in range(5)])
    y = np.array([0, 1, 2, 3, 6], np.uint8)  # the shared FER2013 arrays store labels as uint8
    np.savez(tmp_path / "a.npz", x=x, y=y)
    got = load(tmp_path / "a.npz")
    assert got.x.dtype == np.uint8 and np.array_equal(got.x, x)
    assert got.y.dtype == np.int64 and got.y.tolist() == y.tolist()
    # (N, H, W, 1) and a different stored size are accepted and resized the daemon's way.
    np.savez(tmp_path / "b.npz", x=np.stack([_face(i, 96) for i in range(2)])[..., None], y=y[:2])
    got = load_npz(tmp_path / "b.npz", size=48)
    assert got.x.shape == (2, 48, 48)
    assert np.array_equal(got.x[1], face_tensor(_face(1, 96), 48)[:, :, 0])


def test_npz_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 48, 48), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"needs arrays 'x' .* and 'y' .*found \['images', 'labels'\]"):
        load(tmp_path / "a.npz")


def test_npz_bad_shapes_and_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 48), np.uint8), y=np.zeros(2))
    with pytest.raises(DataError, match=r"'x' has shape \(2, 48\)"):
        load(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 48, 48), np.uint8), y=np.array([0, 9]))
    with pytest.raises(DataError, match=re.escape("label 9 at index 1 is outside 0..6")):
        load(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 48, 48), np.uint8), y=np.zeros(3))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load(tmp_path / "c.npz")
    (tmp_path / "d.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=re.escape("cannot read as .npz")):
        load(tmp_path / "d.npz")


def test_real_fer2013_val_loads() -> None:
    val = Path(__file__).resolve().parents[3] / "shared" / "data" / "fer2013" / "val.npz"
    if not val.is_file():
        pytest.skip(f"{val} is absent (the shared FER2013 arrays sit beside the checkout)")
    data = load(val, "val")
    assert data.x.shape == (3589, 48, 48) and data.x.dtype == np.uint8
    # The standard PublicTest class counts (see shared/data/fer2013/README.md).
    assert data.class_counts().tolist() == [467, 56, 496, 895, 653, 415, 607]


# --- folders --------------------------------------------------------------------------------------


def _write_img(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def test_folder_with_aliases_and_formats(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    gray = _face(1)
    bgr = np.random.default_rng(2).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    _write_img(root / "Happiness" / "a.png", gray)
    _write_img(root / "anger" / "b.png", bgr)
    _write_img(root / "Surprised" / "c.bmp", gray)
    (root / "anger" / "notes.txt").write_text("not an image; ignored")
    got = load_folder(root)
    # Class folders are read in sorted order: Happiness, Surprised, anger (upper case sorts first).
    assert got.y.tolist() == [EMOTIONS.index("happy"), EMOTIONS.index("surprise"), EMOTIONS.index("angry")]
    assert np.array_equal(got.x[0], gray)
    assert np.array_equal(got.x[2], face_tensor(bgr, 48)[:, :, 0])


def test_folder_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_img(root / "train" / "sad" / "1.png", _face(1))
    _write_img(root / "train" / "neutral" / "2.png", _face(2))
    _write_img(root / "val" / "fear" / "3.png", _face(3))
    assert sorted(load(root, "train").y.tolist()) == [EMOTIONS.index("sad"), EMOTIONS.index("neutral")]
    val = load(root, "val")
    assert val.y.tolist() == [EMOTIONS.index("fear")] and np.array_equal(val.x[0], _face(3))


def test_folder_unknown_class_named(tmp_path: Path) -> None:
    _write_img(tmp_path / "happy" / "a.png", _face(1))
    _write_img(tmp_path / "bored" / "b.png", _face(2))
    with pytest.raises(DataError, match=r"unknown class folder 'bored'; rename it to one of angry, disgust"):
        load(tmp_path)


def test_folder_undecodable_image_named(tmp_path: Path) -> None:
    _write_img(tmp_path / "happy" / "a.png", _face(1))
    bad = tmp_path / "happy" / "b.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError, match=rf"{bad}: cannot decode the image"):
        load(tmp_path)


def test_folder_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        load(tmp_path)
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="the class folders hold no images"):
        load(tmp_path)


def test_load_unknown_path_and_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load(tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(DataError, match="unknown data format"):
        load(tmp_path / "x.txt")


# --- FaceSet helpers and class weights ------------------------------------------------------------


def _faceset(counts: list[int]) -> FaceSet:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    return FaceSet(np.zeros((len(y), 48, 48), np.uint8), y, "mem")


def test_split_off_is_stratified_and_disjoint() -> None:
    data = _faceset([100, 10, 50, 200, 80, 40, 60])
    tags = np.arange(len(data))
    data.x[:, 0, 0], data.x[:, 0, 1] = tags % 256, tags // 256  # tag each face to follow it
    train, hold = split_off(data, 0.1, seed=3)
    assert hold.class_counts().tolist() == [10, 1, 5, 20, 8, 4, 6]
    seen = np.concatenate([s.x[:, 0, 0].astype(int) + 256 * s.x[:, 0, 1].astype(int) for s in (train, hold)])
    assert sorted(seen.tolist()) == tags.tolist()  # every face in exactly one split
    assert (train.class_counts() + hold.class_counts()).tolist() == data.class_counts().tolist()


def test_take_and_empty_split() -> None:
    data = _faceset([5, 5, 5, 5, 5, 5, 5])
    sub = data.take(10, seed=1)
    assert len(sub) == 10 and sub.source == "mem[10]"
    assert data.take(100) is data
    with pytest.raises(DataError, match="the split is empty"):
        FaceSet(np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64), "nothing")


def test_class_weights() -> None:
    counts = np.array([400, 10, 400, 800, 400, 200, 400])
    flat = class_weights(counts, 0.0)
    assert all(v == pytest.approx(1.0) for v in flat.values())
    inv = class_weights(counts, 1.0)
    # Inverse frequency: every class carries the same total weight...
    totals = [inv[c] * counts[c] for c in range(7)]
    assert max(totals) == pytest.approx(min(totals))
    # ...and the mean weight per sample stays 1, so the loss scale (and the learning rate) is unchanged.
    for w in (inv, class_weights(counts, 0.5)):
        assert sum(w[c] * counts[c] for c in range(7)) / counts.sum() == pytest.approx(1.0)
    sq = class_weights(counts, 0.5)
    assert sq[1] / sq[3] == pytest.approx(np.sqrt(800 / 10))
    # A class with no faces gets a finite weight instead of dividing by zero.
    assert np.isfinite(class_weights(np.array([10, 0, 10, 10, 10, 10, 10]), 1.0)[1])
