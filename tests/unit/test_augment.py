"""train.augment: each jitter stays inside the range the recipe gives it, and nothing moves when all are off."""

import numpy as np
import pytest

from train.augment import Jitter, augment, inverse_maps

SIZE = 48
OFF = Jitter(flip=False)


def dot(x: float, y: float) -> np.ndarray:
    """A 48x48 face with one soft bright spot at (x, y)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return (255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)).astype(np.float32)


def centroid(img: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()


def test_with_every_jitter_off_the_faces_come_back_as_they_were():
    faces = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 1), dtype=np.uint8)
    out = augment(faces, OFF, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == faces.shape
    np.testing.assert_array_equal(out, faces.astype(np.float32))
    np.testing.assert_allclose(inverse_maps(3, SIZE, OFF, np.random.default_rng(0)), [[[1, 0, 0], [0, 1, 0]]] * 3)


def test_flip_mirrors_about_half_the_faces_exactly():
    face = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE)).astype(np.float32)
    out = augment(np.repeat(face[None], 400, 0), Jitter(flip=True), np.random.default_rng(3))
    same = [np.allclose(o, face) for o in out]
    mirrored = [np.allclose(o, face[:, ::-1]) for o in out]
    assert all(a != b for a, b in zip(same, mirrored))
    assert 160 < sum(mirrored) < 240


def test_translation_moves_a_spot_by_at_most_its_share_of_the_side():
    out = augment(np.repeat(dot(23.5, 23.5)[None], 300, 0), Jitter(flip=False, translate=0.1), np.random.default_rng(4))
    moved = np.array([centroid(o) for o in out]) - 23.5
    assert np.abs(moved).max() <= 0.1 * SIZE + 0.3
    assert np.std(moved[:, 0]) == pytest.approx(0.1 * SIZE / np.sqrt(3), rel=0.15)  # uniform in +-4.8 px
    assert abs(np.corrcoef(moved[:, 0], moved[:, 1])[0, 1]) < 0.2  # the two axes drawn apart


def test_zoom_scales_distances_from_the_centre_within_its_range():
    out = augment(np.repeat(dot(33.5, 23.5)[None], 300, 0), Jitter(flip=False, zoom=0.25), np.random.default_rng(5))
    distance = np.array([centroid(o)[0] for o in out]) - 23.5  # 10 px right of the centre before
    # A sampled side of z times the face's shows it 1/z as large: z in 0.75..1.25.
    assert distance.min() > 10 / 1.25 - 0.3 and distance.max() < 10 / 0.75 + 0.3
    assert distance.max() - distance.min() > 4  # a real spread, not a fixed zoom


def test_rotation_turns_a_spot_about_the_centre_by_at_most_the_angle():
    out = augment(np.repeat(dot(35.5, 23.5)[None], 300, 0), Jitter(flip=False, rotation_deg=15), np.random.default_rng(6))
    c = np.array([centroid(o) for o in out]) - 23.5
    angle = np.degrees(np.arctan2(c[:, 1], c[:, 0]))
    assert np.abs(angle).max() <= 15.5 and np.std(angle) > 6
    np.testing.assert_allclose(np.hypot(c[:, 0], c[:, 1]), 12.0, atol=0.3)  # the distance is kept


def test_brightness_shifts_and_contrast_scales_about_the_mean_inside_0_255():
    face = np.full((SIZE, SIZE), 100, np.float32)
    face[:, : SIZE // 2] = 140
    bright = augment(np.repeat(face[None], 200, 0), Jitter(flip=False, brightness=0.1), np.random.default_rng(7))
    shift = bright.mean(axis=(1, 2)) - face.mean()
    assert np.abs(shift).max() <= 25.5 + 1e-3 and np.std(shift) > 8
    contrast = augment(np.repeat(face[None], 200, 0), Jitter(flip=False, contrast=0.5), np.random.default_rng(8))
    np.testing.assert_allclose(contrast.mean(axis=(1, 2)), face.mean(), atol=1e-3)
    spread = (contrast[:, 0, 0] - contrast[:, 0, -1]) / 40.0
    assert spread.min() >= 0.5 - 1e-4 and spread.max() <= 1.5 + 1e-4
    wild = augment(np.repeat(face[None], 50, 0), Jitter(flip=False, brightness=1.0, contrast=1.0), np.random.default_rng(9))
    assert wild.min() >= 0.0 and wild.max() <= 255.0


def test_the_same_seed_gives_the_same_batch():
    faces = np.random.default_rng(10).integers(0, 256, (8, SIZE, SIZE), dtype=np.uint8)
    j = Jitter(True, 12, 0.25, 0.09, 0.25, 0.25)
    np.testing.assert_array_equal(augment(faces, j, np.random.default_rng(11)), augment(faces, j, np.random.default_rng(11)))
    assert not np.array_equal(augment(faces, j, np.random.default_rng(11)), augment(faces, j, np.random.default_rng(12)))
