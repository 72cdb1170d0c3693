"""The training package end to end: fit → resume → export int8 → load as the daemon does.

A tiny learnable synthetic set (oriented gratings, one orientation per class)
keeps a real fit to a few seconds of compute. The TensorFlow tests share one
trained run and one exported bundle (module fixtures); the rest (metrics maths,
recipe handling, --help) run without TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.labels import EMOTIONS
from edge.preprocess import DEFAULT_CROP_MARGIN
from train.calibration import calibration_set, spanning_calibration
from train.cli import main
from train.data import FaceSet, load
from train.evaluate import compute_metrics, expected_calibration_error

ROOT = Path(__file__).resolve().parents[2]

RECIPE_TOML = """\
# Tiny and easy to learn: no geometric augmentation (it would blur the orientations),
# fast-moving BatchNorm statistics so a few steps give a usable inference-mode model.
arch = "fernet"
width = 0.25
epochs = 5            # overridden by --epochs on the command line
batch_size = 35       # divides the 140 training faces: no second trace for a short last batch
warmup_epochs = 0
bn_momentum = 0.5
flip = false
rotation_deg = 0
zoom = 0
translate = 0
brightness = 0.1      # fit.augmentation needs at least one step
contrast = 0
"""


def synthetic_faces(per_class: int, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Gratings whose orientation encodes the class, random phase, pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xs, ys = [], []
    for c in range(len(EMOTIONS)):
        theta = np.pi * c / len(EMOTIONS)
        for _ in range(per_class):
            wave = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / 8) + rng.uniform(0, 2 * np.pi))
            img = 128 + 90 * wave + rng.normal(0, 12, wave.shape)
            xs.append(np.clip(img, 0, 255).astype(np.uint8))
            ys.append(c)
    return np.stack(xs), np.array(ys, np.uint8)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("synthetic")
    x, y = synthetic_faces(20, seed=0)
    np.savez(root / "train.npz", x=x, y=y)
    for i, (img, c) in enumerate(zip(x, y)):
        folder = root / "folder" / EMOTIONS[c]
        folder.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / f"{i:04d}.png"), img)
    xv, yv = synthetic_faces(10, seed=1)
    np.savez(root / "val.npz", x=xv, y=yv)
    (root / "recipe.toml").write_text(RECIPE_TOML)
    return SimpleNamespace(root=root, folder=root / "folder", train_npz=root / "train.npz",
                           val_npz=root / "val.npz", toml=root / "recipe.toml")


# Runs pytest in a subprocess with the [train] extra's modules made unimportable (nothing is uninstalled).
WITHOUT_TRAIN_EXTRA = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'tensorflow', 'keras', 'matplotlib'}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
if sys.argv[1] == "pytest":
    import pytest
    sys.exit(pytest.main(sys.argv[2:]))
from train.cli import main
sys.exit(main(sys.argv[2:]))
"""


def without_train_extra(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "without_train_extra.py"
    script.write_text(WITHOUT_TRAIN_EXTRA)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_train_tests_skip_with_a_reason_without_the_train_extra(tmp_path: Path) -> None:
    names = ["test_learning_rate_schedules", "test_batchnorm_update_is_the_plain_mean_over_batches",
             "test_mixup_blends_faces_targets_and_weights_by_one_share_each"]
    r = without_train_extra("pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/integration/test_train.py", "-k", " or ".join(names),
                            tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 skipped" in r.stdout and "failed" not in r.stdout, r.stdout
    assert "tensorflow is not installed (pip install 'deepfer[train]')" in r.stdout


def test_evaluate_out_without_matplotlib_writes_metrics_and_card_and_succeeds(synthetic: SimpleNamespace, tmp_path: Path) -> None:
    shipped = ROOT / "edge" / "models" / "deepfer_fernet_int8.tflite"
    out = tmp_path / "eval"
    r = without_train_extra("train", "evaluate", str(shipped), "--data", str(synthetic.val_npz), "--out", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "matplotlib is not installed" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((out / "metrics.json").read_text())["n"] == 70
    assert (out / "model_card.md").is_file() and not list(out.glob("*.png"))


def _best_epoch(run: Path) -> int:
    """1-based epoch of the first maximum of val_accuracy: the one best.keras holds."""
    lines = (run / "history.csv").read_text().splitlines()
    col = lines[0].split(",").index("val_accuracy")
    acc = [float(line.split(",")[col]) for line in lines[1:]]
    return acc.index(max(acc)) + 1


def _history_epochs(run: Path) -> list[int]:
    lines = (run / "history.csv").read_text().splitlines()
    return [int(line.split(",")[0]) for line in lines[1:]]


@pytest.fixture(scope="module")
def trained(synthetic: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`deepfer-train fit` for 2 epochs, then `fit --resume` after the recipe grows to 4 epochs."""
    pytest.importorskip("tensorflow")
    run = tmp_path_factory.mktemp("runs") / "tiny"
    rc = main(["fit", "--data", str(synthetic.folder), "--val-data", str(synthetic.val_npz), "--out", str(run),
               "--recipe", str(synthetic.toml), "--epochs", "2", "--seed", "7", "--swa-epochs", "3", "--verbose", "0"])
    assert rc == 0
    first_recipe = json.loads((run / "recipe.json").read_text())
    first_history = (run / "history.csv").read_text().splitlines()
    # Stand-in for an interrupted run: it has finished 2 of the 4 epochs its recipe asks for.
    (run / "recipe.json").write_text(json.dumps({**first_recipe, "epochs": 4}))
    assert main(["fit", "--out", str(run), "--resume", "--verbose", "0"]) == 0
    return SimpleNamespace(run=run, first_recipe=first_recipe, first_history=first_history)


@pytest.fixture(scope="module")
def bundle(trained: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`deepfer-train export --int8` of the trained run (training data and val from its recipe)."""
    out = tmp_path_factory.mktemp("bundle")
    rc = main(["export", str(trained.run), "--out", str(out), "--name", "tiny_int8", "--calibration", "50",
               "--version", "9.9.9", "--latency-runs", "20", "--max-int8-drop", "5"])
    assert rc == 0
    return SimpleNamespace(out=out, tflite=out / "tiny_int8.tflite", meta=json.loads((out / "tiny_int8.json").read_text()))


# --- data formats of the synthetic set ------------------------------------------------------------


def test_synthetic_folder_and_npz_load_alike(synthetic: SimpleNamespace) -> None:
    folder, npz = load(synthetic.folder), load(synthetic.train_npz)
    # Folders are read in name order (neutral before sad); within a class, in file order.
    f, n = np.argsort(folder.y, kind="stable"), np.argsort(npz.y, kind="stable")
    assert np.array_equal(folder.x[f], npz.x[n]) and np.array_equal(folder.y[f], npz.y[n])


# --- fit and resume -------------------------------------------------------------------------------


@pytest.mark.train
def test_fit_recipe_precedence(trained: SimpleNamespace, synthetic: SimpleNamespace) -> None:
    r = trained.first_recipe
    assert r["epochs"] == 2 and r["seed"] == 7  # flags beat the TOML file...
    assert r["width"] == 0.25 and r["bn_momentum"] == 0.5 and r["flip"] is False  # ...which beats the defaults
    assert r["label_smoothing"] == 0.1  # untouched default
    assert r["data"] == str(synthetic.folder) and r["val_data"] == str(synthetic.val_npz)
    assert r["extra"]["command"].startswith("deepfer-train fit --data ") and "--epochs 2" in r["extra"]["command"]


@pytest.mark.train
def test_the_card_says_how_long_training_took_and_with_which_command(trained: SimpleNamespace, bundle: SimpleNamespace) -> None:
    timing = json.loads((trained.run / "timing.json").read_text())
    assert sorted(timing["train"], key=int) == ["0", "1", "2", "3"]  # resumed epochs add to the first ones
    card = (bundle.out / "tiny_int8.md").read_text()
    assert re.search(r"\| training time \| 4 epochs in \d+ min on .+CPUs \|", card), card
    assert "| command | deepfer-train fit --data " in card


@pytest.mark.train
def test_resume_continues_without_redoing_epochs(trained: SimpleNamespace) -> None:
    assert [int(line.split(",")[0]) for line in trained.first_history[1:]] == [0, 1]
    lines = (trained.run / "history.csv").read_text().splitlines()
    assert lines[: len(trained.first_history)] == trained.first_history  # earlier rows untouched
    assert _history_epochs(trained.run) == [0, 1, 2, 3]  # only the missing epochs ran
    assert (trained.run / "model.keras").is_file() and (trained.run / "best.keras").is_file()


@pytest.mark.train
def test_a_resumed_run_does_not_replay_the_first_epochs_face_order() -> None:
    from train.fit import Recipe, make_datasets

    faces = FaceSet(np.zeros((64, 48, 48), np.uint8), (np.arange(64) % 7).astype(np.uint8), "zeros")
    recipe = Recipe(batch_size=64, flip=False, rotation_deg=0, zoom=0, translate=0, brightness=0, contrast=0)

    def first_epoch_order(epochs_done: int) -> np.ndarray:
        ds, _, _ = make_datasets(recipe, faces, faces, epochs_done)
        return ds[0][1].argmax(axis=1)

    np.testing.assert_array_equal(first_epoch_order(0), first_epoch_order(0))  # reproducible from the seed
    assert not np.array_equal(first_epoch_order(0), first_epoch_order(5))


@pytest.mark.train
def test_weight_average_of_the_last_epochs(trained: SimpleNamespace) -> None:
    import keras

    run = trained.run
    summary = json.loads((run / "swa.json").read_text())
    # The recipe grew from 2 to 4 epochs: the average is of the last 3 of the 4, not of the first run's 2.
    assert summary["epochs_averaged"] == [2, 3, 4]
    assert sorted(p.name for p in (run / "swa").iterdir()) == [f"epoch_00{i}.npz" for i in (1, 2, 3, 4)]
    assert 0.0 <= summary["val_accuracy"] <= 1.0 and summary["batchnorm_batches"] == 4
    snaps = [np.load(run / "swa" / f"epoch_00{i}.npz") for i in (2, 3, 4)]
    model = keras.models.load_model(run / "swa.keras", compile=False)
    bn_stats = {id(v) for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
                for v in (layer.moving_mean, layer.moving_variance)}
    checked = remeasured = 0
    for i, var in enumerate(model.weights):
        mean = np.mean([s[f"arr_{i}"].astype(np.float64) for s in snaps], axis=0)
        if id(var) in bn_stats:
            remeasured += not np.allclose(var.numpy(), mean, atol=1e-4)
        else:
            np.testing.assert_allclose(var.numpy(), mean, rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked > 10 and remeasured > 0
    from train.runs import trained_epochs

    assert trained_epochs(run / "swa.keras") == {"epochs_run": 4, "epoch": 4, "averaged_epochs": [2, 3, 4]}


def test_plain_batches_are_the_training_faces_unaugmented() -> None:
    from train.batchnorm import plain_batches

    x, y = synthetic_faces(3, seed=4)
    faces = FaceSet(x, y, "gratings")
    batches = plain_batches(faces, faces=15, batch_size=4, seed=0)
    assert [b[0].shape for b in batches] == [(4, 48, 48, 1)] * 3 + [(3, 48, 48, 1)]
    got = np.concatenate([b[0] for b in batches])[..., 0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, faces.take(15, 0).x.astype(np.float32))  # raw pixels, nothing jittered
    assert len(plain_batches(faces, faces=1000, batch_size=21, seed=0)) == 1  # all 21 faces, once


@pytest.mark.train
def test_each_epoch_is_validated_with_batchnorm_statistics_of_plain_training_faces(
        synthetic: SimpleNamespace, trained: SimpleNamespace) -> None:
    """The statistics inference uses are measured on un-augmented faces before validation, so the
    val accuracy in history.csv is that of the saved model as the daemon will run it."""
    import keras

    from train.batchnorm import plain_batches, update_batchnorm

    run = trained.run
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["bn_faces"] == 12800
    last = keras.models.load_model(run / "model.keras", compile=False)
    remeasured = keras.models.load_model(run / "model.keras", compile=False)
    batches = plain_batches(load(synthetic.folder), recipe["bn_faces"], recipe["batch_size"], recipe["seed"])
    assert update_batchnorm(remeasured, batches) == 4
    bns = [layer.name for layer in last.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 10
    for name in bns:
        for a, b in zip(last.get_layer(name).non_trainable_weights, remeasured.get_layer(name).non_trainable_weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)

    val = load(synthetic.val_npz)
    best = keras.models.load_model(run / "best.keras", compile=False)
    acc = float((best.predict(val.x[..., None].astype(np.float32), verbose=0).argmax(1) == val.y).mean())
    lines = (run / "history.csv").read_text().splitlines()
    col = lines[0].split(",").index("val_accuracy")
    assert acc == pytest.approx(float(lines[_best_epoch(run)].split(",")[col]), abs=1e-6)


@pytest.mark.train
def test_batchnorm_update_is_the_plain_mean_over_batches() -> None:
    import keras

    from train.batchnorm import update_batchnorm

    inp = keras.Input((3,))
    bn = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inp, bn(inp))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(loc, 1.0 + loc, (16, 3)).astype(np.float32), None) for loc in (0.0, 2.0, 5.0)]
    assert update_batchnorm(model, batches, max_batches=2) == 2
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b[0].mean(0) for b in batches[:2]], axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b[0].var(0) for b in batches[:2]], axis=0), rtol=1e-4)
    assert bn.momentum == 0.9


@pytest.mark.train
def test_prior_correction_shifts_the_logits_by_the_weighted_log_prior() -> None:
    import keras

    from train.errors import ExportError
    from train.fit import Recipe, build
    from train.graph import prior_shift, with_prior_correction

    counts = dict(zip(EMOTIONS, (3995, 436, 4097, 7215, 4830, 3171, 4965)))  # FER2013 Training
    shift = prior_shift(counts, 0.5)
    prior = np.array(list(counts.values())) / sum(counts.values())
    np.testing.assert_allclose(shift, 0.5 * np.log(prior), rtol=1e-6)
    assert prior_shift(counts, 0.0) is None and prior_shift(None, 0.5) is None

    model, _ = build(Recipe(width=0.25))
    faces = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    before = keras.ops.convert_to_numpy(model(faces, training=False))
    after = keras.ops.convert_to_numpy(with_prior_correction(model, shift)(faces, training=False))
    np.testing.assert_allclose(after - before, np.broadcast_to(shift, before.shape), atol=1e-5)
    # Happy (the commonest class) gains against disgust (the rarest): the weights had pushed the other way.
    assert shift[3] - shift[1] == pytest.approx(0.5 * np.log(7215 / 436))

    plain = keras.Model(model.inputs[0], keras.layers.Dense(7, name="scores")(model.layers[-2].output))
    with pytest.raises(ExportError, match="--no-prior-correction"):
        with_prior_correction(plain, shift)


@pytest.mark.train
def test_learning_rate_schedules() -> None:
    import keras

    from train.fit import _schedule

    def rates(kind: str) -> list[float]:
        sched = _schedule(1e-3, total_steps=100, warmup_steps=10, kind=kind)
        return [float(keras.ops.convert_to_numpy(sched(step))) for step in (0, 5, 10, 55, 100)]

    cosine, constant = rates("cosine"), rates("constant")
    assert cosine[0] == constant[0] == 0.0 and cosine[1] == pytest.approx(5e-4) == constant[1]  # the same warmup
    assert cosine[2] == pytest.approx(1e-3) and cosine[4] == pytest.approx(1e-5)  # then down to 1% of the peak
    assert constant[2:] == pytest.approx([1e-3] * 3)  # or held at the peak, for weight averaging


@pytest.mark.train
def test_mixup_blends_faces_targets_and_weights_by_one_share_each() -> None:
    from train.batches import mixup

    n = len(EMOTIONS)
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 48, 48, 1), np.float32)
    y = np.eye(n, dtype=np.float32)
    w = np.arange(1, n + 1, dtype=np.float32)
    rng = np.random.default_rng(3)
    shares = []
    for _ in range(20):
        mx, my, mw = mixup(x, y, w, 0.4, rng)
        np.testing.assert_allclose(my.sum(axis=1), 1.0, rtol=1e-6)
        for k in range(n):
            own = my[k, k]
            assert own >= 0.5  # each blend stays mostly its own face, and keeps its class
            partner = [j for j in range(n) if j != k and my[k, j] > 0]
            j = partner[0] if partner else k
            assert mx[k].min() == mx[k].max() == pytest.approx(own * k + (1 - own) * j, abs=1e-4)
            assert mw[k] == pytest.approx(own * (k + 1) + (1 - own) * (j + 1), abs=1e-4)
            shares.append(own)
    assert 0.5 < np.mean(shares) < 0.95 and np.std(shares) > 0.05  # a real spread of shares, not a fixed blend


@pytest.mark.train
def test_recipe_mixup_reaches_the_training_batches_only() -> None:
    import dataclasses

    from train.fit import Recipe, make_datasets

    rng = np.random.default_rng(0)
    faces = FaceSet(rng.integers(0, 256, (64, 48, 48), dtype=np.uint8), (np.arange(64) % 7).astype(np.uint8), "noise")
    plain = Recipe(batch_size=64, flip=False, rotation_deg=0, zoom=0, translate=0, brightness=0, contrast=0)

    def batches(recipe: Recipe):
        ds_train, ds_val, _ = make_datasets(recipe, faces, faces)
        return ds_train[0], ds_val[0]

    (x0, y0, _), _ = batches(plain)
    (x1, y1, _), (_, yv) = batches(dataclasses.replace(plain, mixup=0.4))
    assert set(np.unique(y0)) == {0.0, 1.0}  # one-hot without mixup
    assert (y1.max(axis=1) < 1.0).mean() > 0.5  # blended targets with it
    assert set(np.unique(yv)) == {0.0, 1.0}  # validation is never blended
    assert not np.allclose(x0, x1)


@pytest.mark.train
def test_distillation_targets_blend_teacher_and_label_and_weigh_by_the_label() -> None:
    from train.fit import Recipe, make_datasets

    rng = np.random.default_rng(1)
    y = (np.arange(64) % 7).astype(np.uint8)
    soft = rng.dirichlet(np.ones(7), size=64).astype(np.float32)
    faces = FaceSet(rng.integers(0, 256, (64, 48, 48), dtype=np.uint8), y, "noise", soft)
    recipe = Recipe(batch_size=64, flip=False, rotation_deg=0, zoom=0, translate=0, brightness=0, contrast=0,
                    teacher="t.npz", teacher_weight=0.7)
    ds_train, ds_val, weights = make_datasets(recipe, faces, FaceSet(faces.x, faces.y, "val"))
    x, target, w = ds_train[0]
    # Shuffled: find each row again by its pixels.
    rows = [int(np.flatnonzero((faces.x == xi[:, :, 0].astype(np.uint8)).all(axis=(1, 2)))[0]) for xi in x]
    np.testing.assert_allclose(target, 0.3 * np.eye(7)[y[rows]] + 0.7 * soft[rows], atol=1e-6)
    # The class weight follows the face's own label even where the teacher's favourite class differs.
    np.testing.assert_allclose(w, [weights[int(y[r])] for r in rows], rtol=1e-6)
    assert set(np.unique(ds_val[0][1])) == {0.0, 1.0}


def test_teacher_targets_must_match_the_training_rows(tmp_path: Path) -> None:
    from train.data import DataError, with_teacher

    faces = FaceSet(np.zeros((10, 48, 48), np.uint8), (np.arange(10) % 7).astype(np.uint8), "ten")
    np.savez(tmp_path / "t.npz", probs=np.full((10, 7), 1 / 7, np.float32), y=faces.y[::-1])
    with pytest.raises(DataError, match="do not match the 10 faces of ten row for row"):
        with_teacher(faces, tmp_path / "t.npz")
    np.savez(tmp_path / "bad.npz", something=np.zeros(3))
    with pytest.raises(DataError, match=re.escape("tools/teacher_targets.py")):
        with_teacher(faces, tmp_path / "bad.npz")
    np.savez(tmp_path / "ok.npz", probs=np.full((10, 7), 1 / 7, np.float32), y=faces.y)
    assert with_teacher(faces, tmp_path / "ok.npz").take(4, 0).soft.shape == (4, 7)


def test_ferplus_vote_targets_in_fer2013_order(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import ferplus_targets

    from train.data import DataError, with_teacher

    # FER+ columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    votes = np.array([[0, 8, 2, 0, 0, 0, 0, 0, 0, 0],   # happy 8, surprise 2
                      [1, 0, 0, 0, 6, 1, 0, 2, 0, 0],   # anger 6, disgust 1, neutral 1 (contempt dropped)
                      [0, 0, 0, 0, 0, 0, 0, 3, 5, 2]],  # nothing that maps: the label, one-hot
                     np.uint8)
    y = np.array([3, 0, 4], np.uint8)
    want = np.zeros((3, 7), np.float32)
    want[0, [3, 5]] = [0.8, 0.2]
    want[1, [0, 1, 6]] = [0.75, 0.125, 0.125]
    want[2, 4] = 1.0
    np.testing.assert_allclose(ferplus_targets.vote_targets(votes, y), want, atol=1e-6)

    np.savez(tmp_path / "train.npz", x=np.zeros((3, 48, 48), np.uint8), y=y, ferplus_votes=votes)
    assert ferplus_targets.main(["--data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "fp.npz")]) == 0
    faces = with_teacher(load(tmp_path / "train.npz"), tmp_path / "fp.npz")  # what fit --teacher reads
    np.testing.assert_allclose(faces.soft, want, atol=1e-6)
    np.savez(tmp_path / "plain.npz", x=np.zeros((3, 48, 48), np.uint8), y=y)
    with pytest.raises(SystemExit, match="no 'ferplus_votes' array"):
        ferplus_targets.main(["--data", str(tmp_path / "plain.npz"), "--out", str(tmp_path / "x.npz")])
    # A recipe's teacher = "ferplus" reads the same votes straight from the data file: no tool run needed.
    np.testing.assert_allclose(with_teacher(load(tmp_path / "train.npz"), "ferplus").soft, want, atol=1e-6)
    with pytest.raises(DataError, match="no 'ferplus_votes' array"):
        with_teacher(load(tmp_path / "plain.npz"), "ferplus")


def test_the_shipped_recipe_file_trains_from_scratch_on_train_npz_alone() -> None:
    from train.cli import build_parser, recipe_from_args

    root = Path(__file__).resolve().parents[2]
    args = build_parser().parse_args(["fit", "--recipe", str(root / "train" / "recipes" / "fernet.toml"), "--out", "runs/x"])
    recipe = recipe_from_args(args)
    assert recipe.arch == "fernet" and recipe.init_from == ""
    assert Path(recipe.data).name == "train.npz" and recipe.teacher == "ferplus"
    assert recipe.bn_faces > 0 and recipe.epochs >= 60


@pytest.mark.train
def test_teacher_targets_tool_then_a_distilled_fit(bundle: SimpleNamespace, synthetic: SimpleNamespace,
                                                  tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import teacher_targets

    out = tmp_path / "teacher.npz"
    assert teacher_targets.main([str(bundle.tflite), "--data", str(synthetic.train_npz), "--out", str(out)]) == 0
    z = np.load(out)
    data = load(synthetic.train_npz)
    assert z["probs"].shape == (len(data), 7) and np.array_equal(z["y"], data.y)
    np.testing.assert_allclose(z["probs"].sum(axis=1), 1.0, atol=1e-4)
    # In the training space: the bundle's prior correction is taken back out of its probabilities.
    shift = np.asarray(bundle.meta["prior_correction"]["logit_shift"])
    from edge.bundle import load_bundle
    from edge.classifier import TFLiteClassifier
    from edge.settings import ClassifierSettings
    from train.evaluate import softmax

    clf = TFLiteClassifier(load_bundle(bundle.tflite), ClassifierSettings())
    x = data.x[..., None]
    mirrored = (clf.predict_tensors(x) + clf.predict_tensors(np.ascontiguousarray(x[:, :, ::-1]))) / 2
    np.testing.assert_allclose(z["probs"], softmax(np.log(np.maximum(mirrored, 1e-12)) - shift), atol=1e-4)

    run = tmp_path / "distilled"
    assert main(["fit", "--data", str(synthetic.train_npz), "--val-data", str(synthetic.val_npz), "--out", str(run),
                 "--recipe", str(synthetic.toml), "--epochs", "1", "--teacher", str(out), "--teacher-weight", "0.6",
                 "--verbose", "0"]) == 0
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["teacher"] == str(out) and recipe["teacher_weight"] == 0.6 and (run / "model.keras").is_file()


def test_teacher_weight_outside_0_1_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--out", str(tmp_path / "run"), "--data", "x.npz", "--teacher-weight", "1.5"]) == 2
    assert "teacher_weight 1.5: must be between 0 and 1" in capsys.readouterr().err


def test_negative_mixup_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--out", str(tmp_path / "run"), "--data", "x.npz", "--mixup", "-0.2"]) == 2
    assert "mixup -0.2: must be between 0 and 100" in capsys.readouterr().err


def test_unknown_lr_schedule_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('data = "x.npz"\nlr_schedule = "step"\n')
    assert main(["fit", "--out", str(tmp_path / "run"), "--recipe", str(bad)]) == 2
    assert "lr_schedule 'step': choose one of cosine, constant" in capsys.readouterr().err


@pytest.mark.train
def test_fit_refuses_to_overwrite_a_run(trained: SimpleNamespace, synthetic: SimpleNamespace,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit", "--data", str(synthetic.train_npz), "--out", str(trained.run), "--verbose", "0"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deepfer-train fit: ") and "--resume" in err[-1]


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.train
def test_bundle_json_fields(bundle: SimpleNamespace, trained: SimpleNamespace) -> None:
    from edge.bundle import load_bundle

    b = load_bundle(bundle.tflite)
    assert b.labels == EMOTIONS and b.input_size == 48 and b.channels == 1
    assert b.crop_margin == DEFAULT_CROP_MARGIN and b.normalization == "folded" and not b.untrained
    assert b.name == "tiny_int8" and b.version == "9.9.9"
    # Every exported bundle carries the fitted framing of train/crop_geometry.json (tools/fit_crop_geometry.py).
    from train.export import read_crop_geometry

    assert set(b.crop_geometry) == {"haar", "yunet"}
    assert b.crop_geometry["yunet"].scale == read_crop_geometry()["yunet"]["scale"]
    m = bundle.meta
    assert m["output"] == "probabilities" and m["input_dtype"] == "uint8" and m["output_dtype"] == "uint8"
    assert m["input_quantization"] == {"scale": 1.0, "zero_point": 0}  # raw pixels in, 1:1
    assert set(m["metrics"]["float"]) >= {"top1", "top2", "macro_f1"} and set(m["metrics"]["int8"]) >= {"top1", "top2", "macro_f1"}
    assert m["metrics"]["float"]["n"] == 70 and 0.0 <= m["metrics"]["int8_float_agreement"] <= 1.0
    assert m["training_data"]["n_train"] == 140 and m["training_data"]["n_val"] == 70
    assert m["calibration"]["n"] == 50
    assert m["recipe"]["epochs"] == 4 and m["recipe"]["arch"] == "fernet"
    assert m["model"]["file"] == "best.keras" and m["model"]["epochs_run"] == 4
    # Balanced synthetic classes: the prior correction is the same shift for every class (a no-op).
    shift = m["prior_correction"]["logit_shift"]
    assert m["prior_correction"]["class_weight_power"] == 0.5 and np.allclose(shift, 0.5 * np.log(1 / 7), atol=1e-4)
    assert m["model"]["epoch"] == _best_epoch(trained.run)
    assert datetime.fromisoformat(m["created"].replace("Z", "+00:00")).tzinfo is not None
    assert m["latency_ms_per_face"] > 0
    assert m["edgetpu"]["compiled"] is False or (bundle.out / "tiny_int8_edgetpu.tflite").is_file()
    card = (bundle.out / "tiny_int8.md").read_text()
    assert "| int8 | 70 |" in card and "FER2013" in card and "tiny_int8_confusion.png" in card
    assert (bundle.out / "tiny_int8_confusion.png").stat().st_size > 1000
    assert (bundle.out / "tiny_int8_curves.png").stat().st_size > 1000
    assert not [p for p in bundle.out.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.train
def test_int8_model_is_integer_only(bundle: SimpleNamespace) -> None:
    from train.tflite import float_ops

    assert float_ops(bundle.tflite) == []


@pytest.mark.train
def test_int8_bundle_agrees_with_float_model(bundle: SimpleNamespace, trained: SimpleNamespace,
                                              synthetic: SimpleNamespace) -> None:
    from edge.bundle import load_bundle
    from edge.classifier import TFLiteClassifier
    from edge.settings import ClassifierSettings
    from train.evaluate import load_predictor

    faces = np.concatenate([load(synthetic.train_npz).x, load(synthetic.val_npz).x])[..., None]
    labels = np.concatenate([load(synthetic.train_npz).y, load(synthetic.val_npz).y])
    clf = TFLiteClassifier(load_bundle(bundle.tflite), ClassifierSettings())
    p_int8 = clf.predict_tensors(faces)
    p_float = load_predictor(trained.run / "best.keras").predict(faces)
    assert np.allclose(p_int8.sum(axis=1), 1.0, atol=0.05)  # the bundle outputs probabilities
    agreement = (p_int8.argmax(1) == p_float.argmax(1)).mean()
    assert agreement >= 0.8, f"int8 and float agree on only {agreement:.0%} of faces"
    assert np.abs(p_int8 - p_float).max() < 0.15
    # The model learned the gratings, so label order and wiring are right end to end.
    assert (p_int8.argmax(1) == labels).mean() >= 0.6


@pytest.mark.train
def test_init_from_an_exported_bundle_recovers_the_float_model(bundle: SimpleNamespace, trained: SimpleNamespace,
                                                               synthetic: SimpleNamespace) -> None:
    """`fit --init-from NAME.tflite`: the int8 bundle's weights, BatchNorm unfolded, in a trainable Keras model."""
    import keras

    from train.card import model_card
    from train.evaluate import load_predictor
    from train.fit import Recipe, build, warm_start_lineage
    from train.warmstart import WarmStartError, load_tflite_weights

    recipe = Recipe(**{k: v for k, v in bundle.meta["recipe"].items() if k != "extra"})
    faces = np.concatenate([load(synthetic.train_npz).x, load(synthetic.val_npz).x])[..., None]
    model, _ = build(recipe)
    fresh = model.predict(faces.astype(np.float32), verbose=0)
    load_tflite_weights(model, bundle.tflite, load(synthetic.train_npz).x[..., None])

    p_float = load_predictor(trained.run / "best.keras").predict(faces)
    p_warm = keras.ops.convert_to_numpy(keras.ops.softmax(model(faces.astype(np.float32), training=False)))
    assert (p_warm.argmax(1) == p_float.argmax(1)).mean() >= 0.9
    assert np.abs(p_warm - p_float).max() < 0.15
    assert not np.allclose(keras.ops.convert_to_numpy(keras.ops.softmax(fresh)), p_float, atol=0.15)
    # Export folded the prior correction into the logits bias; the warm start takes it back out.
    trained_bias = keras.models.load_model(trained.run / "best.keras", compile=False).get_layer("logits").get_weights()[1]
    np.testing.assert_allclose(model.get_layer("logits").get_weights()[1], trained_bias, atol=0.05)
    # Training mode normalises with batch statistics: the unfolded BatchNorm leaves the function as it was,
    # so training starts from the exported model, not from a renormalised one.
    model.get_layer("dropout").rate = 0.0
    p_train = keras.ops.convert_to_numpy(keras.ops.softmax(model(faces.astype(np.float32), training=True)))
    assert (p_train.argmax(1) == p_warm.argmax(1)).mean() >= 0.9

    # The run records what it continues, for the model card.
    # The epochs behind the bundle are those of the exported (best) epoch, not the 4 the run's recipe planned.
    best = _best_epoch(trained.run)
    assert warm_start_lineage(bundle.tflite) == {"from": "tiny_int8 v9.9.9", "epochs_before": best}
    lineage = {"warm_start": warm_start_lineage(bundle.tflite)}
    val_metrics = {"int8": compute_metrics(load(synthetic.val_npz).y, p_warm[-70:])}
    card = model_card("next", val_metrics, recipe={**recipe.__dict__, "epochs": 3, "extra": lineage})
    assert f"| warm start | weights of tiny_int8 v9.9.9 ({best} epochs before this run, {best + 3} in all) |" in card
    # A next run stopped after 3 of its 5 planned epochs, exported at its epoch 2.
    card = model_card("next", val_metrics, recipe={**recipe.__dict__, "epochs": 5, "extra": lineage},
                      bundle={"model": {"epoch": 2, "epochs_run": 3}})
    assert "| epochs run | 3; this model is epoch 2 |" in card
    assert f"({best} epochs before this run, {best + 2} in all)" in card
    # Optional settings appear when on; free-text provenance notes in "extra" become rows.
    assert "| teacher |" not in card and "| teacher_weight |" not in card and "| bn_faces | 12800 |" in card
    card = model_card("next", val_metrics, recipe={**recipe.__dict__, "teacher": "fp.npz", "teacher_weight": 0.3,
                                                   "extra": {**lineage, "lineage": "rebuilt from v1"}})
    assert "| teacher | fp.npz |" in card and "| teacher_weight | 0.3 |" in card and "| lineage | rebuilt from v1 |" in card

    wider, _ = build(Recipe(**{**recipe.__dict__, "width": 0.5}))
    with pytest.raises(WarmStartError, match="width"):
        load_tflite_weights(wider, bundle.tflite, faces[:8])


@pytest.mark.train
def test_flip_tta_bundle_averages_the_face_and_its_mirror(bundle: SimpleNamespace, trained: SimpleNamespace,
                                                          synthetic: SimpleNamespace, tmp_path: Path) -> None:
    from edge.bundle import load_bundle
    from edge.classifier import TFLiteClassifier
    from edge.settings import ClassifierSettings
    from train.tflite import float_ops

    rc = main(["export", str(trained.run), "--out", str(tmp_path), "--name", "tiny_tta", "--calibration", "50",
               "--latency-runs", "5", "--max-int8-drop", "5", "--flip-tta"])
    assert rc == 0
    tta = tmp_path / "tiny_tta.tflite"
    meta = json.loads(tta.with_suffix(".json").read_text())
    assert meta["test_time_augmentation"] == "flip" and bundle.meta["test_time_augmentation"] == "none"
    # The float side is scored as probabilities, not put through a second softmax: that flattened them
    # towards 1/7 (ECE 0.43 when it happened). Averaging probabilities only calibrates them better.
    import keras

    from train.evaluate import outputs_probabilities
    from train.graph import with_flip_average, with_softmax

    tta_model = with_flip_average(with_softmax(keras.models.load_model(trained.run / "best.keras", compile=False)))
    assert outputs_probabilities(tta_model)
    assert meta["metrics"]["float"]["ece"] < bundle.meta["metrics"]["float"]["ece"] + 0.1
    assert float_ops(tta) == []
    assert "mirror image" in (tmp_path / "tiny_tta.md").read_text()

    faces = load(synthetic.val_npz).x[..., None]
    plain = TFLiteClassifier(load_bundle(bundle.tflite), ClassifierSettings())
    both = TFLiteClassifier(load_bundle(tta), ClassifierSettings())
    expected = (plain.predict_tensors(faces) + plain.predict_tensors(faces[:, :, ::-1].copy())) / 2
    got = both.predict_tensors(faces)
    assert np.abs(got - expected).max() < 0.1  # two int8 models calibrated apart: close, not equal
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    # The float wrapper pairs each face of a whole batch with its own mirror image (one batch of 2N inside).
    base = with_softmax(keras.models.load_model(trained.run / "best.keras", compile=False))
    x = faces.astype(np.float32)
    pair_mean = (base.predict(x, verbose=0) + base.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(tta_model.predict(x, batch_size=16, verbose=0), pair_mean, atol=1e-5)


@pytest.mark.train
def test_evaluate_cli_reproduces_export_metrics(bundle: SimpleNamespace, trained: SimpleNamespace,
                                                synthetic: SimpleNamespace, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out_q, out_f = tmp_path / "int8", tmp_path / "float"
    assert main(["evaluate", str(bundle.tflite), "--data", str(synthetic.val_npz), "--out", str(out_q)]) == 0
    assert main(["evaluate", str(trained.run / "best.keras"), "--data", str(synthetic.val_npz), "--out", str(out_f)]) == 0
    table = capsys.readouterr().out
    assert "top-1" in table and "surprise" in table
    mq = json.loads((out_q / "metrics.json").read_text())
    mf = json.loads((out_f / "metrics.json").read_text())
    assert mq["kind"] == "tflite-int8" and mf["kind"] == "keras-float"
    assert round(mq["accuracy"], 4) == bundle.meta["metrics"]["int8"]["top1"]
    assert round(mf["accuracy"], 4) == bundle.meta["metrics"]["float"]["top1"]
    assert np.asarray(mq["confusion_matrix"]["counts"]).sum() == 70
    assert (out_f / "training_curves.png").is_file() and (out_f / "confusion_matrix.png").is_file()
    assert "## Limitations" in (out_q / "model_card.md").read_text()


@pytest.mark.train
def test_int8_drop_guard_refuses_and_writes_nothing(bundle: SimpleNamespace, trained: SimpleNamespace,
                                                    synthetic: SimpleNamespace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import train.export as export_mod

    # Reuse the bundle's flatbuffer instead of converting again (conversion is tested above)...
    monkeypatch.setattr(export_mod, "convert", lambda model, calib, int8=True: bundle.tflite.read_bytes())
    # ...and score it on labels shifted by one class, against a float model forced to be right on
    # every one of them: the int8 model (right on the true classes) then falls ~100 points behind.
    val = load(synthetic.val_npz)
    shifted = FaceSet(val.x, (val.y + 1) % len(EMOTIONS), "shifted labels")
    np.savez(tmp_path / "shifted.npz", x=shifted.x, y=shifted.y)
    monkeypatch.setattr(export_mod, "float_predictions",
                        lambda model, faces: np.eye(len(EMOTIONS), dtype=np.float32)[shifted.y])
    out = tmp_path / "refused"
    with pytest.raises(export_mod.ExportError, match=r"int8 top-1 .* points below float 100.00% on shifted labels"):
        export_mod.export(trained.run, out, "refused", load(synthetic.train_npz).x[:20], val=shifted,
                          options=export_mod.ExportOptions(latency_runs=0, prior_correction=False))
    assert list(out.iterdir()) == []  # neither the bundle nor its staging folder
    # The same bundle passes when the float model is no better than int8 (here: wrong on every face).
    monkeypatch.setattr(export_mod, "float_predictions",
                        lambda model, faces: np.eye(len(EMOTIONS), dtype=np.float32)[(shifted.y + 1) % len(EMOTIONS)])
    export_mod.export(trained.run, tmp_path / "kept", "kept", load(synthetic.train_npz).x[:20], val=shifted,
                      options=export_mod.ExportOptions(latency_runs=0, report=False, prior_correction=False))
    assert (tmp_path / "kept" / "kept.tflite").is_file()
    # Through the CLI the refusal is one line on stderr and exit status 1.
    monkeypatch.setattr(export_mod, "float_predictions",
                        lambda model, faces: np.eye(len(EMOTIONS), dtype=np.float32)[shifted.y])
    rc = main(["export", str(trained.run), "--out", str(out), "--name", "refused", "--calibration", "20",
               "--val-data", str(tmp_path / "shifted.npz"), "--latency-runs", "0"])
    assert rc == 1
    assert "points below float" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(out.iterdir()) == []


# A GPU machine lent for training has JAX but no TensorFlow: the child trains on KERAS_BACKEND=jax
# with TensorFlow unimportable, then scores the val faces with the model it saved.
JAX_FIT = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'tensorflow':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import keras, numpy as np
from train.cli import main
run, val, out = sys.argv[-3:]
assert main(sys.argv[1:-3] + ["--out", run]) == 0
assert keras.backend.backend() == "jax" and "tensorflow" not in sys.modules
x = np.load(val)["x"][..., None].astype(np.float32)
np.save(out, keras.ops.convert_to_numpy(keras.models.load_model(run + "/best.keras", compile=False)(x, training=False)))
"""


@pytest.mark.train
def test_fit_runs_on_jax_without_tensorflow_and_its_model_exports_here(synthetic: SimpleNamespace, tmp_path: Path) -> None:
    pytest.importorskip("jax")
    import keras

    from edge.bundle import load_bundle


    script, run, scores = tmp_path / "jax_fit.py", tmp_path / "run", tmp_path / "scores.npy"
    script.write_text(JAX_FIT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    args = ["fit", "--data", str(synthetic.train_npz), "--val-data", str(synthetic.val_npz), "--recipe", str(synthetic.toml),
            "--epochs", "2", "--swa-epochs", "2", "--verbose", "0"]
    r = subprocess.run([sys.executable, str(script), *args, str(run), str(synthetic.val_npz), str(scores)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"best.keras", "swa.keras", "history.csv", "timing.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "recipe.json").read_text())["extra"]["backend"] == "jax"
    # The same file on TensorFlow gives the same scores, so export converts what JAX trained.
    x = np.load(synthetic.val_npz)["x"][..., None].astype(np.float32)
    here = keras.models.load_model(run / "best.keras", compile=False)(x, training=False)
    np.testing.assert_allclose(np.asarray(here), np.load(scores), atol=1e-4)
    assert main(["export", str(run), "--out", str(tmp_path / "bundle"), "--name", "jax_int8", "--calibration", "50",
                 "--latency-runs", "0", "--max-int8-drop", "5"]) == 0
    assert load_bundle(tmp_path / "bundle" / "jax_int8.tflite").name == "jax_int8"


# --- no TensorFlow needed -------------------------------------------------------------------------


def test_help_works_without_tensorflow() -> None:
    # Make `import tensorflow` / `import keras` fail in the child, as on a Pi without the [train] extra.
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from train.cli import main\n"
        "for argv in (['--help'], ['fit', '--help'], ['export', '--help'], ['evaluate', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
        "sys.exit(main(['fit', '--out', 'nowhere']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "usage: deepfer-train fit" in res.stdout and "--calibration" in res.stdout
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "deepfer-train fit: fit needs training data: --data PATH (or data = \"...\" in --recipe)"


def test_bad_recipe_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('data = "x.npz"\nepochz = 3\n')
    assert main(["fit", "--out", str(tmp_path / "run"), "--recipe", str(bad)]) == 2
    assert "unknown keys ['epochz']" in capsys.readouterr().err
    bad.write_text('data = "x.npz"\nepochs = "many"\n')
    assert main(["fit", "--out", str(tmp_path / "run"), "--recipe", str(bad)]) == 2
    assert "epochs = 'many' should be a int" in capsys.readouterr().err
    bad.write_text("data = \n")
    assert main(["fit", "--out", str(tmp_path / "run"), "--recipe", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_data_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "run"), "--verbose", "0"])
    assert rc == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"deepfer-train fit: --data {tmp_path / 'none.npz'}: no such file or folder"
    assert not (tmp_path / "run").exists()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--name", "x"]) == 1
    assert "not a run folder or a .keras model" in capsys.readouterr().err


def test_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    probs = np.array([
        [0.7, 0.2, 0.1],  # 0 -> 0, right
        [0.3, 0.6, 0.1],  # 0 -> 1, wrong, true class second
        [0.1, 0.8, 0.1],  # 1 -> 1, right
        [0.1, 0.1, 0.8],  # 2 -> 2, right
        [0.5, 0.1, 0.4],  # 2 -> 0, wrong, true class second
        [0.6, 0.3, 0.1],  # 2 -> 0, wrong, true class third
    ])
    m = compute_metrics(y, probs, labels=("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(3 / 6) and m["top2_accuracy"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"]["counts"] == [[1, 1, 0], [0, 1, 0], [2, 0, 1]]
    # precision: a 1/3, b 1/2, c 1/1; recall: a 1/2, b 1/1, c 1/3
    assert m["per_class"]["a"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert m["per_class"]["c"]["f1"] == pytest.approx(0.5)
    assert m["macro"]["f1"] == pytest.approx((0.4 + 2 / 3 + 0.5) / 3)
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])  # always so: support-weighted recall
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.8, 0.4, 0.1])))
    # ECE, 15 bins: confidence 0.7 (right) in (.667,.733]; both 0.6s (wrong) in (.533,.6];
    # both 0.8s (right) in (.733,.8]; 0.5 (wrong) in (.467,.533]. Sum of |accuracy - confidence| x share.
    ece = (abs(1 - 0.7) * 1 + 0.6 * 2 + abs(1 - 0.8) * 2 + 0.5 * 1) / 6
    assert expected_calibration_error(y, probs) == pytest.approx(ece)
    assert m["ece"] == pytest.approx(ece)


def test_macro_average_skips_absent_classes() -> None:
    y = np.array([0, 1, 0, 1])
    probs = np.eye(7)[[0, 1, 0, 1]] * 0.9 + 0.1 / 7
    m = compute_metrics(y, probs)
    assert m["accuracy"] == 1.0 and m["macro"]["f1"] == pytest.approx(1.0)
    assert m["per_class"]["happy"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_calibration_set_is_stratified() -> None:
    y = np.concatenate([np.full(n, c) for c, n in enumerate([400, 20, 400, 700, 480, 300, 500])])
    data = FaceSet(np.random.default_rng(0).integers(0, 256, (len(y), 48, 48), dtype=np.uint8), y, "mem")
    calib = calibration_set(data, 100, seed=1)
    assert calib.shape == (100, 48, 48)
    # Find each chosen face's class by its pixels: every class is represented, the rare one too.
    index = {data.x[i].tobytes(): int(data.y[i]) for i in range(len(data))}
    classes = np.bincount([index[f.tobytes()] for f in calib], minlength=7)
    assert (classes >= 1).all() and classes[3] >= classes[1]
    assert len({f.tobytes() for f in calib}) == 100  # no face twice


def test_spanning_calibration_reaches_0_and_255() -> None:
    faces = np.random.default_rng(0).integers(40, 200, (5, 48, 48, 1), dtype=np.uint8)
    out = spanning_calibration(faces)
    assert out.min() == 0 and out.max() == 255 and len(out) == 6
    assert np.array_equal(out[:5], faces)  # the real faces are kept as they are
    full = faces.copy()
    full[0, 0, 0, 0], full[1, 0, 0, 0] = 0, 255
    assert spanning_calibration(full) is full


FAKE_COMPILER = """#!/bin/sh
# Stands in for Coral's edgetpu_compiler (x86-64 Debian only, not installable here):
# same arguments (-s -o OUTDIR MODEL), same output file name and summary line.
[ "$1" = "-s" ] && [ "$2" = "-o" ] || { echo "bad args: $*" >&2; exit 2; }
[ -n "$FAIL" ] && { echo "Model not quantized" >&2; exit 1; }
name=$(basename "$4" .tflite)
cp "$4" "$3/${name}_edgetpu.tflite"
echo "Number of operations that will run on Edge TPU: 42"
"""


def test_edgetpu_compiler_when_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    from train.tflite import compile_edgetpu

    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3 not a real model")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with caplog.at_level("INFO", logger="train.tflite"):
        assert compile_edgetpu(model) == {"compiled": False, "reason": "edgetpu_compiler not on PATH"}
    assert "sudo apt install edgetpu-compiler" in caplog.text and "m_edgetpu.tflite" in caplog.text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgetpu_compiler").write_text(FAKE_COMPILER)
    (bin_dir / "edgetpu_compiler").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert compile_edgetpu(model) == {"compiled": True, "file": "m_edgetpu.tflite", "ops_on_tpu": 42}
    assert (tmp_path / "m_edgetpu.tflite").read_bytes() == model.read_bytes()
    (tmp_path / "m_edgetpu.tflite").unlink()
    monkeypatch.setenv("FAIL", "1")
    with caplog.at_level("WARNING", logger="train.tflite"):
        assert compile_edgetpu(model) == {"compiled": False, "reason": "exit 1"}
    assert "Model not quantized" in caplog.text


@pytest.mark.train
def test_float_ops_are_found_in_a_float_model(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    import keras
    from keras import layers

    from train.errors import ExportError
    from train.tflite import check_integer_only, convert, float_ops

    inp = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, strides=2)(layers.Rescaling(1 / 127.5, offset=-1.0)(inp))
    model = keras.Model(inp, layers.Dense(len(EMOTIONS), activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "float.tflite"
    path.write_bytes(convert(model, None, int8=False))
    assert any(op.startswith("CONV_2D") for op in float_ops(path))
    with pytest.raises(ExportError, match=r"op\(s\) still compute in float \(.*CONV_2D"):
        check_integer_only(path)


def test_a_recipe_is_checked_where_it_is_defined_also_on_load(tmp_path: Path) -> None:
    from train.fit import Recipe, RecipeError

    saved = tmp_path / "recipe.json"
    Recipe(data="x.npz").save(saved)
    assert Recipe.load(saved).arch == "fernet"
    raw = json.loads(saved.read_text())
    for change, message in (({"arch": "resnet"}, "arch 'resnet': choose one of fernet"),
                            ({"zoom": 1.5}, "zoom 1.5: must be between 0 and 0.9"),
                            ({"lr_schedule": "step"}, "lr_schedule 'step': choose one of cosine, constant")):
        saved.write_text(json.dumps({**raw, **change}))
        with pytest.raises(RecipeError, match=message):
            Recipe.load(saved)
