"""Transfer learning: backbone weights from a file, head on a frozen backbone, then fine-tuning with BatchNorm frozen."""

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="training needs the [train] extra")
pytest.importorskip("tensorflow", reason="training needs the [train] extra")

from train.fit import Recipe, fit  # noqa: E402
from train.model import build_application  # noqa: E402


def tiny_npz(path: Path, n: int = 70) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 7
    x = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    x[:, :, :] = (x // 4 + (y[:, None, None] * 30)).astype(np.uint8)
    np.savez(path, x=x, y=y)
    return path


def test_two_stage_fine_tuning_from_a_local_weights_file(tmp_path):
    # A "pretrained" backbone: saved by the test itself, since nothing can be downloaded here.
    keras.utils.set_random_seed(7)
    _, backbone = build_application("mobilenetv2", 48, width=0.35, weights=None)
    weights = tmp_path / "backbone.weights.h5"
    backbone.save_weights(weights)
    saved_kernel = backbone.get_layer("Conv1").get_weights()[0]

    _, reloaded = build_application("mobilenetv2", 48, width=0.35, weights=str(weights))
    np.testing.assert_array_equal(reloaded.get_layer("Conv1").get_weights()[0], saved_kernel)

    data = tiny_npz(tmp_path / "faces.npz")
    recipe = Recipe(data=str(data), arch="mobilenetv2", width=0.35, weights=str(weights), epochs=1, head_epochs=1,
                    batch_size=32, holdout=0.2)
    run = tmp_path / "run"
    best = fit(recipe, run, verbose=0)
    assert best.exists() and (run / "backup" / "head.done").exists() and (run / "head.keras").exists()

    head = keras.models.load_model(run / "head.keras")
    # Stage 1 trained only the head: the backbone still holds the file's weights.
    np.testing.assert_array_equal(head.get_layer(index=3).get_layer("Conv1").get_weights()[0], saved_kernel)

    final = keras.models.load_model(run / "model.keras")
    bb = final.get_layer(index=3)
    assert bb.trainable
    bns = [layer for layer in bb._flatten_layers(include_self=False) if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    # Stage 2 did move the backbone's convolutions.
    assert not np.array_equal(bb.get_layer("Conv1").get_weights()[0], saved_kernel)
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one head epoch + one fine-tune epoch


def test_init_from_starts_a_new_cycle_from_earlier_weights(tmp_path):
    from train.model import build_fernet

    keras.utils.set_random_seed(11)
    earlier = build_fernet(width=0.25)
    earlier.save(tmp_path / "earlier.keras")
    data = tiny_npz(tmp_path / "faces.npz")
    recipe = Recipe(data=str(data), width=0.25, epochs=1, batch_size=32, holdout=0.2, lr=1e-12, weight_decay=0.0,
                    warmup_epochs=0.0, init_from=str(tmp_path / "earlier.keras"))
    fit(recipe, tmp_path / "run", verbose=0)
    after = keras.models.load_model(tmp_path / "run" / "model.keras")
    # With a vanishing learning rate the convolutions are still the ones it started from.
    np.testing.assert_allclose(after.get_layer("stem_conv").get_weights()[0], earlier.get_layer("stem_conv").get_weights()[0], atol=1e-6)
    fresh = build_fernet(width=0.25)
    assert not np.allclose(fresh.get_layer("stem_conv").get_weights()[0], earlier.get_layer("stem_conv").get_weights()[0])
