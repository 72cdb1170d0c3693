"""FER2013 faces rendered into camera-like frames, where the training crop of every face is known.

A FER2013 face *is* the crop the model was trained on. Rendered into a frame
the way a camera sees a face (larger, with surroundings), it lets two things
be measured that real photos cannot give: how a detector's box relates to the
training crop (``tools/fit_crop_geometry.py`` fits :class:`edge.preprocess.CropGeometry`
from it), and how much accuracy detection and framing cost end to end
(``deepfer-edge bench --faces val.npz``).

How a face is rendered (:func:`render_face`):

- the 48x48 face is enlarged to ``side`` pixels (bicubic), drawn from
  ``FACE_SIDES``, as a face 1-2 m from a 640x480 shelf camera appears;
- its border pixels are extended outwards by ``CONTEXT`` of the side on each
  side (edge replication: hair, neck and background continue past the crop,
  which the detectors need to see a whole head) and faded into a plain grey
  background with camera-like noise;
- it lands at a random place in a ``FRAME`` frame, entirely inside it.

The known crop is the enlarged face's own square.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from edge.geometry import iou
from edge.preprocess import Box, CropGeometry, crop_square, face_tensor
from edge.protocols import Message, SourceError
from edge.settings import EdgeSettings
from edge.sinks import wire
from edge.sources.base import FiniteSource

FRAME = (640, 480)  # width, height
FACE_SIDES = (140, 220)  # range of the enlarged face's side, pixels
CONTEXT = 0.35  # surroundings on each side, as a share of the face's side
NOISE = 3.0  # grey levels of sensor noise


class RenderedFace(NamedTuple):
    image: np.ndarray  # BGR frame
    crop: Box  # the face's training crop in frame pixels (a square)


def render_face(face: np.ndarray, rng: np.random.Generator, frame: tuple[int, int] = FRAME,
                sides: tuple[int, int] = FACE_SIDES) -> RenderedFace:
    """One frame holding one FER2013 face (``face``: HxW uint8) with its crop known."""
    fw, fh = frame
    side = int(rng.integers(sides[0], sides[1] + 1))
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    pad = int(round(CONTEXT * side))
    patch = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE).astype(np.float32)
    n = patch.shape[0]
    # Fade the extended border into the background: 1 over the face, falling to 0 at the patch edge.
    ramp = np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / max(pad, 1), 0.0, 1.0)
    alpha = np.minimum.outer(ramp, ramp) ** 0.7
    if n > fw or n > fh:
        raise ValueError(f"a {side} px face with its surroundings ({n} px) does not fit a {fw}x{fh} frame")
    x0, y0 = int(rng.integers(0, fw - n + 1)), int(rng.integers(0, fh - n + 1))
    background = float(rng.uniform(60, 190))
    canvas = np.full((fh, fw), background, np.float32)
    region = canvas[y0 : y0 + n, x0 : x0 + n]
    canvas[y0 : y0 + n, x0 : x0 + n] = alpha * patch + (1.0 - alpha) * region
    canvas += rng.normal(0.0, NOISE, canvas.shape).astype(np.float32)
    gray = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return RenderedFace(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), Box(x0 + pad, y0 + pad, side, side))


# --- the crop geometry fit -----------------------------------------------------------------------

MATCH_IOU = 0.3  # a detection this close to the face's crop is that face


def best_match(boxes: list[Box], crop: Box) -> Box | None:
    """The box that overlaps ``crop`` most, if by at least MATCH_IOU."""
    best = max(boxes, key=lambda b: iou(b, crop), default=None)
    return best if best is not None and iou(best, crop) >= MATCH_IOU else None


def fit_geometry(boxes: list[Box], crops: list[Box]) -> CropGeometry:
    """The geometry that maps detector ``boxes`` onto the training ``crops`` (squares), face for face.

    Medians, not means: a detector's box is sometimes far off (a box around
    half the face), and one such face must not move the framing of all others.
    The basis is the box's geometric mean side, because detectors disagree on
    the aspect of a face (YuNet's boxes are taller than wide, Haar's square).
    """
    if not boxes or len(boxes) != len(crops):
        raise ValueError(f"need as many boxes as crops, at least one (got {len(boxes)} and {len(crops)})")
    b = np.array(boxes, np.float64)
    c = np.array(crops, np.float64)
    unit = np.sqrt(b[:, 2] * b[:, 3])
    scale = np.median(c[:, 2] / unit)
    dx = np.median((c[:, 0] + c[:, 2] / 2 - (b[:, 0] + b[:, 2] / 2)) / unit)
    dy = np.median((c[:, 1] + c[:, 3] / 2 - (b[:, 1] + b[:, 3] / 2)) / unit)
    return CropGeometry(round(float(scale), 4), round(float(dx), 4), round(float(dy), 4), "geomean")


def mean_iou(boxes: list[Box], crops: list[Box], geometry: CropGeometry) -> float:
    """How well ``geometry`` reproduces the training crops: mean IoU of its squares with them."""
    return float(np.mean([iou(crop_square(b, geometry), c) for b, c in zip(boxes, crops)])) if boxes else 0.0


# --- the end-to-end accuracy benchmark -----------------------------------------------------------


class RenderedFaces(FiniteSource):
    """A clip of rendered faces, one after another: each face for ``hold`` frames, then ``gap``
    frames of background alone, so that its track ends before the next face appears."""

    def __init__(self, faces: np.ndarray, hold: int, gap: int, seed: int = 0) -> None:
        super().__init__(f"rendered faces ({len(faces)})", loop=False)
        self.faces = faces
        self.hold, self.gap = hold, gap
        self.seed = seed
        self.crops: list[Box] = []  # each face's training crop, in the order shown
        self.current = -1  # the face on screen now (-1 before the first)

    def _pass(self) -> Iterator[np.ndarray | None]:
        rng = np.random.default_rng(self.seed)
        self.crops = []
        for k, face in enumerate(self.faces):
            shown = render_face(face, rng)
            self.crops.append(shown.crop)
            self.current = k
            for _ in range(self.hold):
                yield shown.image
            blank = np.full_like(shown.image, int(shown.image[0, 0, 0]))
            for _ in range(self.gap):
                yield blank


@dataclass
class TrackRecorder:
    """A sink that notes which rendered face each track started on and what the track concluded."""

    source: RenderedFaces
    name: str = "recorder"
    on_closed: Callable[[], None] | None = None
    started: dict[int, tuple[int, Box]] = field(default_factory=dict)  # track id -> (face, box)
    dominant: dict[int, str] = field(default_factory=dict)  # track id -> dominant emotion at its end

    def start(self) -> None:
        pass

    def publish(self, message: Message) -> None:
        body = message.payload
        if message.topic != wire.EVENTS or not isinstance(body, dict):
            return
        if body["type"] == "track_started":
            self.started[body["track_id"]] = (self.source.current, Box(*body["box"]))
        elif body["type"] == "track_ended":
            self.dominant[body["track_id"]] = body["dominant"]

    def status(self) -> dict[str, Any]:
        return {"tracks": len(self.started)}

    def stop(self, timeout: float = 5.0) -> None:
        pass


def paired_loss(plain_right: np.ndarray, end_to_end_right: np.ndarray) -> tuple[float, float]:
    """Points of top-1 lost from the plain crops to end to end on the same faces, and its standard error.

    The two readings are of the same faces, so the error is that of the per-face difference: only
    the faces where exactly one of the two is right carry it.
    """
    d = np.asarray(plain_right, np.float64) - np.asarray(end_to_end_right, np.float64)
    if d.size == 0:
        return 0.0, 0.0
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return 100 * float(d.mean()), 100 * se


def load_faces(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(faces, labels) of a FER2013-style .npz (``x`` (N, 48, 48) uint8, ``y`` (N,))."""
    try:
        with np.load(path) as z:
            x, y = z["x"], z["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(f"--faces {path}: not a FER2013-style .npz with arrays x (N, 48, 48) and y (N,) ({exc})") from None
    if x.ndim != 3 or len(x) != len(y) or x.dtype != np.uint8:
        raise SourceError(f"--faces {path}: x has shape {x.shape} {x.dtype}; expected (N, H, W) uint8 faces, one label each")
    return x, y.astype(np.int64)


def accuracy(settings: EdgeSettings, path: Path, limit: int = 0, seed: int = 0) -> dict[str, Any]:
    """Run the daemon on a clip of ``path``'s faces; compare its verdicts with the model on the plain crops."""
    from edge import daemon

    x, y = load_faces(path)
    if limit:
        idx = np.random.default_rng(seed).permutation(len(x))[:limit]
        x, y = x[idx], y[idx]
    settings = settings.model_copy(deep=True)
    settings.mqtt.persist = False
    # Only a detection pass can end a track: hold each face for one pass (and the carried frames after it),
    # then show background for one pass, which ends the face's track at once.
    every = settings.detector.every_n_frames
    settings.tracker.max_missed = 0
    source = RenderedFaces(x, hold=every, gap=every, seed=seed)
    recorder = TrackRecorder(source)
    comps = daemon.build(settings, sinks=[recorder], source=source)
    comps.source.open()
    try:
        comps.pipeline.run()
    finally:
        comps.source.close()
    labels = list(comps.bundle.labels)
    classifier = comps.pipeline.classifier
    size, channels = comps.bundle.input_size, comps.bundle.channels
    plain = np.concatenate([
        classifier.predict_tensors(np.stack([face_tensor(f, size, channels) for f in x[i : i + 256]])).argmax(1)
        for i in range(0, len(x), 256)
    ])
    verdict = np.full(len(x), -1)
    best: dict[int, float] = {}
    false_tracks = 0
    for track, (k, box) in recorder.started.items():
        overlap = iou(box, source.crops[k]) if k >= 0 else 0.0
        if overlap < MATCH_IOU or track not in recorder.dominant:
            false_tracks += 1
            continue
        if overlap > best.get(k, 0.0):
            if k in best:
                false_tracks += 1
            best[k] = overlap
            verdict[k] = labels.index(recorder.dominant[track])
        else:
            false_tracks += 1
    found = verdict >= 0
    n_found = int(found.sum())
    e2e_found = float((verdict[found] == y[found]).mean()) if n_found else 0.0
    plain_found = float((plain[found] == y[found]).mean()) if n_found else 0.0
    loss, loss_se = paired_loss(plain[found] == y[found], verdict[found] == y[found])
    return {
        "faces": len(x),
        "source": str(path),
        "detector": comps.pipeline.detector.name,
        "geometry": comps.pipeline.geometry._asdict(),
        "found": n_found,
        "found_ratio": round(n_found / len(x), 4),
        "false_tracks": false_tracks,
        "top1_end_to_end_all": round(float((verdict == y).mean()), 4),
        "top1_end_to_end_found": round(e2e_found, 4),
        "top1_plain_found": round(plain_found, 4),
        "top1_plain_all": round(float((plain == y).mean()), 4),
        "framing_loss_points": round(loss, 2),
        "framing_loss_se_points": round(loss_se, 2),
    }
