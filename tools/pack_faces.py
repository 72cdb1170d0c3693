#!/usr/bin/env python3
"""Pack a FER2013-style .npz small enough to travel to a GPU machine, and unpack it there, exactly.

The device tool sends at most 64 MiB with each call, and FER2013's training faces alone are
60 MiB in an .npz (zlib barely shrinks photographs). As one PNG mosaic they are about 74% of
that: PNG predicts each pixel from its neighbours before compressing, and it is lossless.

    python tools/pack_faces.py pack ../shared/data/fer2013/train.npz .device/data/train
    python tools/pack_faces.py unpack .device/data/train /tmp/fer2013/train.npz

``pack`` writes ``PREFIX.faces.png`` (the ``x`` faces, COLUMNS to a row) and ``PREFIX.rest.npz``
(every other array, compressed); ``unpack`` rebuilds an .npz with the same arrays, bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

COLUMNS = 128


def mosaic(faces: np.ndarray, columns: int = COLUMNS) -> np.ndarray:
    """(N, H, W) uint8 faces as one (rows*H, columns*W) image, the last row padded with black."""
    n, h, w = faces.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w), np.uint8)
    padded[:n] = faces
    return padded.reshape(rows, columns, h, w).transpose(0, 2, 1, 3).reshape(rows * h, columns * w)


def unmosaic(image: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    rows, columns = image.shape[0] // h, image.shape[1] // w
    return image.reshape(rows, h, columns, w).transpose(0, 2, 1, 3).reshape(rows * columns, h, w)[:n]


def pack(src: Path, prefix: Path) -> tuple[Path, Path]:
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    x = arrays.pop("x")
    if x.ndim != 3 or x.dtype != np.uint8:
        raise SystemExit(f"{src}: x is {x.shape} {x.dtype}; pack takes (N, H, W) uint8 faces")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    png, rest = Path(f"{prefix}.faces.png"), Path(f"{prefix}.rest.npz")
    if not cv2.imwrite(str(png), mosaic(x), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"{png}: could not be written")
    np.savez_compressed(rest, _x_shape=np.array(x.shape), **arrays)
    return png, rest


def unpack(prefix: Path, dst: Path) -> Path:
    png, rest = Path(f"{prefix}.faces.png"), Path(f"{prefix}.rest.npz")
    image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SystemExit(f"{png}: missing or not a PNG; run `pack` first")
    with np.load(rest) as z:
        arrays = {k: z[k] for k in z.files}
    n, h, w = (int(v) for v in arrays.pop("_x_shape"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, x=unmosaic(image, n, h, w), **arrays)
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="NPZ -> PREFIX.faces.png + PREFIX.rest.npz")
    p.add_argument("src", type=Path)
    p.add_argument("prefix", type=Path)
    u = sub.add_parser("unpack", help="PREFIX.faces.png + PREFIX.rest.npz -> NPZ")
    u.add_argument("prefix", type=Path)
    u.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        png, rest = pack(args.src, args.prefix)
        size = (png.stat().st_size + rest.stat().st_size) / 2**20
        print(f"{args.src} -> {png.name} + {rest.name}: {size:.1f} MiB (was {args.src.stat().st_size / 2**20:.1f})")
    else:
        print(unpack(args.prefix, args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
