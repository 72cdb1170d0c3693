"""Face crop and tensor preparation, shared by the daemon and by training.

Training imports this module so that a face reaches the network the same way in
both places: same square crop, same grayscale conversion, same resize
interpolation. The crop's framing (:class:`edge.geometry.CropGeometry`) is
measured per detector so that it reproduces the framing of the FER2013 training
faces. The network itself folds pixel normalisation into its graph, so the
tensor produced here is raw uint8 pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.geometry import BASES, Box, CropGeometry, crop_square

__all__ = ["BASES", "DEFAULT_CROP_MARGIN", "Box", "CropGeometry", "crop_face", "crop_square", "face_tensor",
           "frame_face_tensor", "resize_face", "shrink", "to_gray", "to_uint8"]


# Margin added on each side of a detector box before the square crop, for bundles that record no
# per-detector crop geometry (the framing every model before 0.5 was shipped with).
DEFAULT_CROP_MARGIN = 0.1


def to_uint8(image: np.ndarray) -> np.ndarray | None:
    """``image`` with uint8 pixels, or None for a pixel type with no sensible mapping (complex, object, …).

    16-bit pixels keep their high byte, as OpenCV's decoders do (``imread`` of
    a 16-bit PNG), so a 16-bit camera frame and a 16-bit file of the same
    picture give the same pixels. Floats in [0, 1] (some decoders) are scaled
    to 0..255, other floats and integers clipped; NaN becomes 0, bool 0 or 255.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        peak = float(np.nanmax(image, initial=0.0))
        scaled = image * 255.0 if peak <= 1.0 else image
        return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    if image.dtype == np.bool_:
        out: np.ndarray = image.astype(np.uint8) * 255
        return out
    if np.issubdtype(image.dtype, np.integer):
        clipped: np.ndarray = np.clip(image, 0, 255).astype(np.uint8)
        return clipped
    return None


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 grayscale view of a gray, BGR or BGRA image (other pixel types as :func:`to_uint8`)."""
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 1:
        gray = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        gray = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    else:
        raise ValueError(f"unsupported image shape {image.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    converted = to_uint8(gray)
    if converted is None:
        raise ValueError(f"unsupported pixel type {gray.dtype}: expected integer, float or bool pixels")
    return converted


def crop_face(gray: np.ndarray, square: Box) -> np.ndarray:
    """Cut a crop out of a grayscale frame, replicating edges where it runs past the border."""
    left, top, side_w, side_h = square
    h, w = gray.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side_w, w), min(top + side_h, h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face crop {tuple(square)} lies outside the {w}x{h} frame")
    crop = gray[y0:y1, x0:x1]
    pad = (y0 - top, top + side_h - y1, x0 - left, left + side_w - x1)
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, borderType=cv2.BORDER_REPLICATE)
    return crop


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaged (antialiased) downscale to ``width`` x ``height``.

    A direct INTER_AREA at a large fractional ratio builds its weight tables on
    every call; this gets within a grey level of it at a fraction of the cost
    (a 180 px face to 48: 16 vs 48 us; 640x360 to 240 wide: about 3x less) by
    OpenCV's fast exact halvings: halve while the image is at least 4x the
    target, resample bilinearly by less than 2x to twice the target, halve.
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if w < 2 * width or h < 2 * height:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    while w >= 4 * width and h >= 4 * height:
        # Halving first keeps the bilinear step small. An odd last row or column is dropped: that moves
        # the far edge by under a quarter of an output pixel.
        h, w = h // 2, w // 2
        image = cv2.resize(image[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
    if (w, h) != (2 * width, 2 * height):
        image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def resize_face(face: np.ndarray, size: int) -> np.ndarray:
    """Resize a square grayscale face to ``size`` x ``size`` uint8.

    Shrinking is area-averaged (antialiased, as FER2013's own 48x48 crops are),
    enlarging bilinear.
    """
    if face.shape[0] == size and face.shape[1] == size:
        return face
    if face.shape[0] < size:
        return cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)
    return shrink(face, size, size)


def face_tensor(image: np.ndarray, size: int, channels: int = 1) -> np.ndarray:
    """Turn a face image (any size, gray/BGR/BGRA) into the network's HxWxC uint8 input."""
    face = resize_face(to_gray(image), size)
    if channels == 1:
        return face[:, :, None]
    return np.repeat(face[:, :, None], channels, axis=2)


def frame_face_tensor(gray_frame: np.ndarray, square: Box, size: int, channels: int = 1) -> np.ndarray:
    """Cut one face's square crop (see :func:`crop_square`) from a grayscale frame and prepare it for the network."""
    return face_tensor(crop_face(gray_frame, square), size, channels)
