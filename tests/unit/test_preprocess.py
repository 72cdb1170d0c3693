"""``shrink``/``resize_face``: the fast antialiased downscale stays close to a direct INTER_AREA; pixel types onto uint8."""

from __future__ import annotations

from importlib import resources

import cv2
import numpy as np
import pytest

from edge.preprocess import resize_face, shrink, to_gray, to_uint8
from edge.sources import normalise_image


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The bundled demo face (a real photograph), grayscale: detail at every scale."""
    data = resources.files("edge.assets").joinpath("astronaut_face.jpg").read_bytes()
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray is not None
    return gray


@pytest.mark.parametrize("side", [49, 60, 95, 96, 97, 100, 137, 180, 191, 192, 250, 383, 385, 401, 700, 1000])
def test_face_downscale_matches_inter_area(photo: np.ndarray, side: int) -> None:
    face = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    got = resize_face(face, 48)
    assert got.shape == (48, 48) and got.dtype == np.uint8
    direct = cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA)
    diff = np.abs(got.astype(int) - direct.astype(int))
    assert diff.mean() < 2.5, f"{side} px face: mean difference {diff.mean():.2f} grey levels from INTER_AREA"
    # A misaligned pyramid would shift edges by a pixel and show up as large differences.
    assert np.percentile(diff, 99) <= 16


def test_small_and_exact_faces(photo: np.ndarray) -> None:
    exact = np.ascontiguousarray(photo[:48, :48])
    assert resize_face(exact, 48) is exact
    tiny = cv2.resize(photo, (30, 30), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_face(tiny, 48), cv2.resize(tiny, (48, 48), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("size", [(240, 135), (320, 180), (160, 90), (101, 57), (640, 360)])
def test_frame_downscale_for_detection(photo: np.ndarray, size: tuple[int, int]) -> None:
    frame = cv2.resize(photo, (640, 360), interpolation=cv2.INTER_CUBIC)
    got = shrink(frame, *size)
    assert got.shape == (size[1], size[0])
    direct = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    assert np.abs(got.astype(int) - direct.astype(int)).mean() < 1.5


def test_colour_frames_keep_their_channels(photo: np.ndarray) -> None:
    bgr = cv2.cvtColor(cv2.resize(photo, (640, 360)), cv2.COLOR_GRAY2BGR)
    assert shrink(bgr, 240, 135).shape == (135, 240, 3)


def test_16_bit_frames_read_as_opencv_reads_a_16_bit_file(tmp_path) -> None:
    deep = np.array([[0, 255, 1992, 32896, 65279, 65280, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    from_file = cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_GRAYSCALE)
    assert from_file.tolist() == [[0, 0, 7, 128, 254, 255, 255]]
    # The daemon's two ways in, a camera frame through the source and a frame straight to to_gray, agree with it.
    assert to_gray(deep).tolist() == from_file.tolist()
    assert to_gray(normalise_image(deep)).tolist() == from_file.tolist()


def test_other_pixel_types_map_onto_0_to_255() -> None:
    assert to_uint8(np.array([0.0, 0.5, 1.0, np.nan], np.float32)).tolist() == [0, 127, 255, 0]
    assert to_uint8(np.array([-3.0, 80.0, 300.0])).tolist() == [0, 80, 255]  # not a [0, 1] image: clipped
    assert to_uint8(np.array([-5, 7, 300], np.int32)).tolist() == [0, 7, 255]
    assert to_uint8(np.array([False, True])).tolist() == [0, 255]
    assert to_uint8(np.array([1 + 2j])) is None
    with pytest.raises(ValueError, match="pixel type"):
        to_gray(np.zeros((2, 2), np.complex64))
