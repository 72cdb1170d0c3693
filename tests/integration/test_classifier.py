"""The daemon's classifier on real int8 models: quantisation from the model, bundle checks, delegates."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import BundleError, ModelBundle, default_bundle_path, load_bundle
from edge.classifier import TFLiteClassifier, interpreter_module
from edge.labels import EMOTIONS
from edge.preprocess import Box
from edge.protocols import MissingExtra
from edge.settings import ClassifierSettings

tf = pytest.importorskip("tensorflow", reason="building test models needs TensorFlow (pip install -e '.[train]')")
keras = pytest.importorskip("keras")


def tiny_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((48, 48, 1))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(7, activation="softmax")(x)
    return keras.Model(inp, out)


def faces(n=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 48, 48, 1)).astype(np.uint8)
    base[:, :2, :2] = [[0], [255]]  # calibration spans the full pixel range
    return base


def convert(model, in_type, out_type) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([f[None].astype(np.float32)] for f in faces(64))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = in_type
    conv.inference_output_type = out_type
    return conv.convert()


def write_bundle(folder: Path, name: str, flat: bytes, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.tflite"
    path.write_bytes(flat)
    doc = {"name": name, "version": "t", "labels": list(EMOTIONS), "input_size": 48, "channels": 1,
           "normalization": "folded", "crop_margin": 0.1, **meta}
    path.with_suffix(".json").write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model = tiny_model()
    return {
        "model": model,
        "uint8": write_bundle(folder, "u8", convert(model, tf.uint8, tf.uint8)),
        "int8": write_bundle(folder, "i8", convert(model, tf.int8, tf.int8)),
        "folder": folder,
    }


@pytest.mark.parametrize("kind", ["uint8", "int8"])
def test_int8_scores_follow_the_float_model(models, kind):
    clf = TFLiteClassifier(load_bundle(models[kind]), ClassifierSettings())
    x = faces(32, seed=1)
    got = clf.predict_tensors(x)
    want = models["model"].predict(x.astype(np.float32), verbose=0)
    assert got.shape == (32, 7)
    assert np.allclose(got.sum(axis=1), 1.0, atol=0.05)  # dequantised with the model's own scale and zero point
    assert np.abs(got - want).max() < 0.05


def test_int8_input_is_quantised_with_the_models_zero_point(models):
    clf = TFLiteClassifier(load_bundle(models["int8"]), ClassifierSettings())
    q = clf.quantize(np.array([[0, 128, 255]], np.uint8))
    assert q.dtype == np.int8
    # Calibration spanned 0..255, so the model maps pixels with scale ~1 and zero point ~-128.
    assert np.abs(q.astype(int) - np.array([[-128, 0, 127]])).max() <= 1


def test_classify_crops_boxes_from_a_frame(models):
    clf = TFLiteClassifier(load_bundle(models["uint8"]), ClassifierSettings())
    frame = np.random.default_rng(2).integers(0, 256, (360, 640), dtype=np.uint8)
    out = clf.classify(frame, [Box(10, 10, 80, 80), Box(600, 300, 60, 60)])  # the second reaches past the corner
    assert out.shape == (2, 7) and np.isfinite(out).all()
    assert clf.classify(frame, []).shape == (0, 7)


def test_wrong_output_size_is_refused_with_the_fix(models, tmp_path):
    path = write_bundle(tmp_path, "five", models["uint8"].read_bytes(), labels=["a", "b", "c", "d", "e"])
    with pytest.raises(BundleError, match=r"outputs 7 classes but its \.json lists 5 labels"):
        TFLiteClassifier(load_bundle(path), ClassifierSettings())


def test_wrong_input_size_is_refused(models, tmp_path):
    path = write_bundle(tmp_path, "size", models["uint8"].read_bytes(), input_size=64)
    with pytest.raises(BundleError, match=r"takes input \(1, 48, 48, 1\)"):
        TFLiteClassifier(load_bundle(path), ClassifierSettings())


def test_bundle_errors_name_the_file(tmp_path):
    with pytest.raises(BundleError, match=re.escape("missing.tflite does not exist")):
        load_bundle(tmp_path / "missing.tflite")
    (tmp_path / "lonely.tflite").write_bytes(b"x")
    with pytest.raises(BundleError, match=re.escape("lonely.json is missing")):
        load_bundle(tmp_path / "lonely.tflite")
    (tmp_path / "lonely.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "lonely.tflite")
    (tmp_path / "lonely.json").write_text(json.dumps({"labels": list(EMOTIONS), "input_size": 48}))
    with pytest.raises(BundleError, match="cannot be loaded"):
        TFLiteClassifier(load_bundle(tmp_path / "lonely.tflite"), ClassifierSettings())


def test_the_shipped_bundle_loads():
    bundle = load_bundle()
    assert bundle.labels == EMOTIONS and bundle.input_size == 48
    clf = TFLiteClassifier(bundle, ClassifierSettings())
    assert clf.predict_tensors(faces(4)).shape == (4, 7)



def test_the_shipped_bundle_json_round_trips_unchanged(tmp_path):
    """ModelBundle reads and writes NAME.json: loading the shipped bundle and writing it back gives the same bytes."""
    shipped = default_bundle_path()
    bundle = load_bundle(shipped)
    assert bundle.to_json() == shipped.with_suffix(".json").read_text()
    copy = tmp_path / shipped.name
    shutil.copy(shipped, copy)
    assert bundle.write(copy.with_suffix(".json")) == copy.with_suffix(".json")
    assert load_bundle(copy) == ModelBundle.from_json(bundle.meta, copy)


def test_a_created_bundle_is_checked_as_the_daemon_checks_it(models, tmp_path):
    tflite = tmp_path / "made.tflite"
    tflite.write_bytes(models["uint8"].read_bytes())
    made = ModelBundle.create(tflite, name="made", version="1", labels=EMOTIONS, input_size=48, channels=1,
                              crop_margin=0.1, crop_geometry={"haar": {"scale": 1.2, "dx": 0.0, "dy": 0.0, "basis": "geomean"},
                                                             "fitted_on": "a note, kept"},
                              test_time_augmentation="none")
    assert list(made.meta) == ["name", "version", "labels", "input_size", "channels", "normalization", "crop_margin",
                               "crop_geometry", "output", "untrained", "test_time_augmentation"]
    assert made.crop_geometry["haar"].scale == 1.2 and made.meta["crop_geometry"]["fitted_on"] == "a note, kept"
    grown = made.with_fields(version="2", sha256="abc")
    assert list(grown.meta)[-1] == "sha256" and grown.version == "2" and made.version == "1"
    grown.write()
    assert load_bundle(tflite) == grown
    assert TFLiteClassifier(load_bundle(tflite), ClassifierSettings()).predict_tensors(faces(2)).shape == (2, 7)
    with pytest.raises(BundleError, match="channels \\(1 or 3\\)"):
        ModelBundle.create(tflite, name="x", version="1", labels=EMOTIONS, input_size=48, channels=2, crop_margin=0.1)
    with pytest.raises(BundleError, match=r"crop_geometry\.haar .* out of range"):
        made.with_fields(crop_geometry={"haar": {"scale": 9.0}})

class FakeEdgeTpuRuntime:
    """The LiteRT module with a stand-in for the Coral delegate (no Edge TPU on this machine)."""

    def __init__(self, present: bool):
        self.real, _ = interpreter_module()
        self.present = present
        self.loaded: list[tuple[str, dict]] = []
        self.model_paths: list[str] = []

    def load_delegate(self, library, options=None):
        if not self.present:
            raise ValueError(f"Failed to load delegate from {library}")
        self.loaded.append((library, options or {}))
        return object()

    def Interpreter(self, model_path, experimental_delegates=None, num_threads=1):
        self.model_paths.append(model_path)
        # The compiled model would run on the TPU; here the same graph runs on the CPU.
        return self.real.Interpreter(model_path=model_path, num_threads=num_threads)


def test_edgetpu_uses_the_compiled_model_and_the_device_option(models, tmp_path):
    folder = tmp_path / "tpu"
    shutil.copytree(models["folder"], folder)
    shutil.copy(folder / "u8.tflite", folder / "u8_edgetpu.tflite")
    rt = FakeEdgeTpuRuntime(present=True)
    clf = TFLiteClassifier(load_bundle(folder / "u8.tflite"), ClassifierSettings(delegate="edgetpu", edgetpu_device="usb:0"), rt, "fake")
    assert clf.backend == "edgetpu"
    assert rt.loaded == [("libedgetpu.so.1", {"device": "usb:0"})]
    assert rt.model_paths == [str(folder / "u8_edgetpu.tflite")]


@pytest.fixture
def compiled(models, tmp_path):
    """The uint8 bundle with a compiled twin u8_edgetpu.tflite beside it (the same graph)."""
    folder = tmp_path / "tpu"
    shutil.copytree(models["folder"], folder)
    shutil.copy(folder / "u8.tflite", folder / "u8_edgetpu.tflite")
    return folder / "u8.tflite"


def test_edgetpu_missing_runtime_names_the_package_and_the_fix(compiled):
    with pytest.raises(MissingExtra, match=re.escape("libedgetpu1-std 16.0 is known to crash")) as err:
        TFLiteClassifier(load_bundle(compiled), ClassifierSettings(delegate="edgetpu"), FakeEdgeTpuRuntime(False), "fake")
    assert "install.sh --with-coral" in str(err.value)


def test_edgetpu_without_compiled_model_is_refused(models):
    with pytest.raises(BundleError, match=re.escape("u8_edgetpu.tflite is missing")):
        TFLiteClassifier(load_bundle(models["uint8"]), ClassifierSettings(delegate="edgetpu"), FakeEdgeTpuRuntime(True), "fake")


def test_auto_falls_back_to_cpu_with_a_warning(compiled, caplog):
    with caplog.at_level(logging.WARNING):
        clf = TFLiteClassifier(load_bundle(compiled), ClassifierSettings(delegate="auto"), FakeEdgeTpuRuntime(False), "fake")
    assert clf.backend == "cpu"
    assert "no Edge TPU (cannot load the Edge TPU delegate" in caplog.text


def test_auto_without_compiled_model_does_not_load_the_runtime(models, caplog):
    # A runtime that crashes on load must not be touched when there is nothing to run on it.
    rt = FakeEdgeTpuRuntime(True)
    with caplog.at_level(logging.WARNING):
        clf = TFLiteClassifier(load_bundle(models["uint8"]), ClassifierSettings(delegate="auto"), rt, "fake")
    assert clf.backend == "cpu" and rt.loaded == []
    assert "u8_edgetpu.tflite is missing" in caplog.text
