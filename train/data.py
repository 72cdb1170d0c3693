"""FER2013-style data loaders: the Kaggle CSV, ``.npz`` arrays and a folder per class.

Every loader returns :class:`FaceSet` objects holding 48x48 (or ``size``) uint8
faces that went through :func:`edge.preprocess.face_tensor`, the same function
the daemon uses, so a face is prepared identically for training and inference.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.labels import EMOTIONS
from edge.preprocess import face_tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp", ".tif", ".tiff"}
# Kaggle's CSV names its splits this way; PublicTest is the usual validation split.
CSV_SPLITS = {"train": ("Training",), "val": ("PublicTest",), "test": ("PrivateTest",)}
# Folder datasets name classes in many ways; map the common spellings onto ours.
FOLDER_ALIASES = {
    "anger": "angry", "angry": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral",
}


class DataError(ValueError):
    """Bad or missing training data; the message names the file (and row) and the fix."""


@dataclass
class FaceSet:
    """Faces and labels of one split."""

    x: np.ndarray  # (N, S, S) uint8
    y: np.ndarray  # (N,) int64, index into EMOTIONS
    source: str
    soft: np.ndarray | None = None  # (N, len(EMOTIONS)) float32 teacher probabilities (distillation), or None
    seen: np.ndarray | None = None  # (N, S, S) uint8: each face as the daemon frames it (tools/seen_faces.py), or None

    def __post_init__(self) -> None:
        if len(self.x) == 0:
            raise DataError(f"{self.source}: the split is empty; check the file and the split name")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.source}: {len(self.x)} images but {len(self.y)} labels")
        if self.soft is not None and self.soft.shape != (len(self.y), len(EMOTIONS)):
            raise DataError(f"{self.source}: teacher targets have shape {self.soft.shape}, "
                            f"not ({len(self.y)}, {len(EMOTIONS)}); make them from this same data file")
        if self.seen is not None and self.seen.shape != self.x.shape:
            raise DataError(f"{self.source}: the daemon-framed faces have shape {self.seen.shape}, not {self.x.shape}; "
                            "make them from this same data file (tools/seen_faces.py)")
        bad = (self.y < 0) | (self.y >= len(EMOTIONS))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{self.source}: label {int(self.y[i])} at index {i} is outside 0..{len(EMOTIONS) - 1} "
                f"({', '.join(EMOTIONS)})"
            )

    def __len__(self) -> int:
        return len(self.x)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=len(EMOTIONS))

    def take(self, n: int, seed: int = 0) -> FaceSet:
        """A class-stratified-by-chance random subset of at most ``n`` faces."""
        if n >= len(self):
            return self
        idx = np.random.default_rng(seed).choice(len(self), size=n, replace=False)
        return self.subset(idx, f"{self.source}[{n}]")

    def subset(self, idx: np.ndarray, source: str) -> FaceSet:
        return FaceSet(self.x[idx], self.y[idx], source, None if self.soft is None else self.soft[idx],
                       None if self.seen is None else self.seen[idx])


def _resize_all(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[1:] == (size, size):
        return x
    return np.stack([face_tensor(img, size)[:, :, 0] for img in x])


def load_npz(path: Path, size: int = 48) -> FaceSet:
    try:
        with np.load(path) as data:
            if "x" not in data or "y" not in data:
                raise DataError(f"{path}: an .npz needs arrays 'x' (N,H,W) uint8 and 'y' (N,); found {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read as .npz ({exc})") from exc
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise DataError(f"{path}: 'x' has shape {x.shape}; expected (N, H, W) grayscale faces")
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    return FaceSet(_resize_all(x, size), y.astype(np.int64), str(path))


def load_csv(path: Path, split: str, size: int = 48) -> FaceSet:
    """Kaggle ``fer2013.csv``: ``emotion,pixels,Usage``; ``split`` is train, val or test."""
    usages = CSV_SPLITS.get(split, (split,))
    xs: list[np.ndarray] = []
    ys: list[int] = []
    try:
        fh = open(path, newline="")  # noqa: SIM115 -- opened apart from the with, so a missing file gets its own message
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from exc
    with fh:
        reader = csv.DictReader(fh)
        need = {"emotion", "pixels"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: expected a header with columns emotion,pixels[,Usage]; got {reader.fieldnames}")
        has_usage = "Usage" in reader.fieldnames
        for row_no, row in enumerate(reader, start=2):
            if has_usage and row["Usage"] not in usages:
                continue
            try:
                label = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.int64)
            except (ValueError, AttributeError) as exc:
                raise DataError(f"{path}:{row_no}: corrupt row ({exc})") from exc
            side = int(round(np.sqrt(pixels.size)))
            if side * side != pixels.size or pixels.size == 0:
                raise DataError(f"{path}:{row_no}: {pixels.size} pixels is not a square image (FER2013 rows hold 2304 = 48x48)")
            if pixels.min() < 0 or pixels.max() > 255:
                raise DataError(f"{path}:{row_no}: pixel values must lie in 0..255")
            if not 0 <= label < len(EMOTIONS):
                raise DataError(f"{path}:{row_no}: emotion {label} is outside 0..{len(EMOTIONS) - 1}")
            xs.append(pixels.astype(np.uint8).reshape(side, side))
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no rows for split {split!r} (Usage in {usages}); check the file and --split")
    x = np.stack([face_tensor(img, size)[:, :, 0] for img in xs])
    return FaceSet(x, np.array(ys, dtype=np.int64), f"{path}[{split}]")


def load_folder(root: Path, size: int = 48) -> FaceSet:
    """A folder per class: ``root/<emotion>/*.jpg`` (also ``root/<split>/<emotion>/``, see :func:`load`)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders; expected {root}/<emotion>/*.jpg with emotions {', '.join(EMOTIONS)}")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for folder in classes:
        name = FOLDER_ALIASES.get(folder.name.lower())
        if name is None:
            raise DataError(
                f"{folder}: unknown class folder {folder.name!r}; rename it to one of {', '.join(EMOTIONS)}"
            )
        label = EMOTIONS.index(name)
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if img is None or img.size == 0:
                raise DataError(f"{file}: cannot decode the image; delete or replace it")
            xs.append(face_tensor(img, size)[:, :, 0])
            ys.append(label)
    if not xs:
        raise DataError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return FaceSet(np.stack(xs), np.array(ys, dtype=np.int64), str(root))


def load(path: str | Path, split: str = "train", size: int = 48) -> FaceSet:
    """Load a split from a CSV, an ``.npz`` or a folder; the format follows the path."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        sub = p / split
        return load_folder(sub if sub.is_dir() else p, size)
    if p.suffix == ".npz":
        return load_npz(p, size)
    if p.suffix == ".csv":
        return load_csv(p, split, size)
    raise DataError(f"{p}: unknown data format; use a Kaggle fer2013 .csv, an .npz or a folder per class")


def split_off(data: FaceSet, fraction: float, seed: int) -> tuple[FaceSet, FaceSet]:
    """Hold out a stratified ``fraction`` for validation when no separate split is given."""
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c in range(len(EMOTIONS)):
        idx = np.flatnonzero(data.y == c)
        rng.shuffle(idx)
        val_idx.append(idx[: int(round(len(idx) * fraction))])
    v = np.concatenate(val_idx)
    mask = np.ones(len(data), bool)
    mask[v] = False
    return data.subset(mask, f"{data.source}[train]"), data.subset(v, f"{data.source}[holdout]")


# FER+ vote columns, in the order of fer2013new.csv (and of the FER2013 npz's ferplus_votes).
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FERPLUS_NAMES = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
                 "surprise": "surprise", "neutral": "neutral"}
# ``teacher = "ferplus"`` in a recipe: the targets come from the data file's own FER+ votes.
FERPLUS_TEACHER = "ferplus"


def vote_targets(votes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 10) FER+ vote counts -> (N, 7) probabilities in FER2013 order (one-hot ``y`` where no vote maps).

    FER+'s contempt, unknown and not-a-face votes have no FER2013 class and are dropped.
    """
    votes = np.asarray(votes, np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise DataError(f"FER+ votes have shape {votes.shape}; expected (N, {len(FERPLUS_COLUMNS)})")
    ours = votes[:, [FERPLUS_COLUMNS.index(FERPLUS_NAMES[e]) for e in EMOTIONS]]
    total = ours.sum(axis=1, keepdims=True)
    onehot = np.eye(len(EMOTIONS))[np.asarray(y, np.int64)]
    return np.where(total > 0, ours / np.maximum(total, 1.0), onehot).astype(np.float32)


def ferplus_votes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(votes, y) of a FER2013 .npz that carries FER+ crowd votes."""
    try:
        with np.load(path) as z:
            return z["ferplus_votes"], z["y"]
    except KeyError:
        raise DataError(f"{path}: no 'ferplus_votes' array (FER+ vote counts, FER+ column order "
                        f"{', '.join(FERPLUS_COLUMNS)}); only the FER2013 .npz files carry them") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from None


def with_ferplus(data: FaceSet) -> FaceSet:
    """Attach the FER+ vote distributions of the faces' own data file as soft targets."""
    votes, y = ferplus_votes(data.source)
    if len(y) != len(data) or not np.array_equal(y, data.y):
        raise DataError(f"{data.source}: its FER+ votes do not match its {len(data)} faces row for row")
    return dataclasses.replace(data, soft=vote_targets(votes, y))


def with_teacher(data: FaceSet, path: str | Path) -> FaceSet:
    """Attach the soft targets that ``tools/teacher_targets.py`` wrote for this same data, row for row
    (``"ferplus"``: the data file's own FER+ votes)."""
    if str(path) == FERPLUS_TEACHER:
        return with_ferplus(data)
    p = Path(path)
    try:
        with np.load(p) as z:
            probs, y = z["probs"].astype(np.float32), z["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"teacher {p}: not a teacher-targets .npz with 'probs' and 'y' ({exc}); "
                        "write one with tools/teacher_targets.py") from None
    if len(y) != len(data) or not np.array_equal(y, data.y):
        raise DataError(f"teacher {p}: its {len(y)} labels do not match the {len(data)} faces of {data.source} "
                        "row for row; make the targets from the same --data file")
    return dataclasses.replace(data, soft=probs)


def with_seen(data: FaceSet, path: str | Path) -> FaceSet:
    """Attach the faces as the daemon frames them, which ``tools/seen_faces.py`` wrote for this same data, row for row."""
    p = Path(path)
    try:
        with np.load(p) as z:
            seen, y = z["x"], z["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"seen faces {p}: not a .npz with 'x' and 'y' ({exc}); write one with tools/seen_faces.py") from None
    if len(y) != len(data) or not np.array_equal(y, data.y):
        raise DataError(f"seen faces {p}: its {len(y)} labels do not match the {len(data)} faces of {data.source} "
                        "row for row; make them from the same --data file")
    if seen.dtype != np.uint8 or seen.shape != data.x.shape:
        raise DataError(f"seen faces {p}: x is {seen.shape} {seen.dtype}, expected {data.x.shape} uint8; "
                        "make them for this input size (tools/seen_faces.py reads it from the bundle)")
    return dataclasses.replace(data, seen=seen)
