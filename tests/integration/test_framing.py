"""Face framing: detector boxes become the square crops the model was trained on.

The crop geometry is measured per detector on FER2013 faces rendered into frames
(``edge.facebench``), recorded in the bundle, and used by the daemon; a bundle
without it frames faces as before (the longer side plus ``crop_margin``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import BundleError, default_bundle_path, load_bundle
from edge.detectors import create_detector
from edge.facebench import best_match, fit_geometry, mean_iou, render_face
from edge.preprocess import Box, CropGeometry, crop_square
from edge.protocols import Frame
from edge.settings import DetectorSettings, EdgeSettings

REPO = Path(__file__).resolve().parents[2]
FER = REPO.parent / "shared" / "data" / "fer2013"


def fer_faces(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    path = FER / f"{split}.npz"
    if not path.is_file():
        pytest.skip(f"FER2013 faces not found at {path} (the shared/ folder beside the checkout)")
    with np.load(path) as z:
        return z["x"][:n], z["y"][:n]


# --- the geometry itself ---------------------------------------------------------------------------


def test_margin_geometry_is_the_old_framing() -> None:
    # The longer side plus 10% on each side, centred: what every bundle before crop_geometry got.
    assert crop_square(Box(100, 50, 80, 100), CropGeometry.from_margin(0.1)) == Box(80, 40, 120, 120)


def test_fitted_geometry_scales_the_geometric_mean_side_and_shifts_the_centre() -> None:
    g = CropGeometry(scale=1.25, dx=0.1, dy=-0.05)
    # A 64 x 100 box: geometric mean 80, so the square's side is 100 and its centre moves 8 px right, 4 up.
    assert crop_square(Box(0, 0, 64, 100), g) == Box(32 + 8 - 50, 50 - 4 - 50, 100, 100)


def test_unknown_basis_is_an_error() -> None:
    with pytest.raises(ValueError, match="basis"):
        crop_square(Box(0, 0, 10, 10), CropGeometry(1.0, basis="width"))


def test_fit_recovers_a_known_mapping_despite_a_few_wild_boxes() -> None:
    rng = np.random.default_rng(0)
    truth = CropGeometry(1.12, 0.03, -0.02)
    boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in
             zip(rng.integers(0, 400, 40), rng.integers(0, 300, 40), rng.integers(80, 200, 40), rng.integers(80, 200, 40))]
    crops = [crop_square(b, truth) for b in boxes]
    boxes[:3] = [Box(b.x, b.y, b.w // 3, b.h // 3) for b in boxes[:3]]  # three boxes around a third of the face
    g = fit_geometry(boxes, crops)
    assert g.basis == "geomean"
    assert g.scale == pytest.approx(truth.scale, abs=0.01)
    assert g.dx == pytest.approx(truth.dx, abs=0.01) and g.dy == pytest.approx(truth.dy, abs=0.01)


def test_fit_on_a_handful_of_rendered_training_faces() -> None:
    faces, _ = fer_faces("train", 40)
    rng = np.random.default_rng(5)
    pairs: dict[str, tuple[list[Box], list[Box]]] = {"haar": ([], []), "yunet": ([], [])}
    detectors = {k: create_detector(DetectorSettings(kind=k)) for k in pairs}
    for face in faces:
        shown = render_face(face, rng)
        assert shown.image.shape == (480, 640, 3) and shown.crop.w == shown.crop.h
        for kind, det in detectors.items():
            box = best_match([d.box for d in det.detect(Frame(shown.image, 0, 0.0))], shown.crop)
            if box is not None:
                pairs[kind][0].append(box)
                pairs[kind][1].append(shown.crop)
    margin = CropGeometry.from_margin(0.1)
    for kind, (boxes, crops) in pairs.items():
        assert len(boxes) >= 20, f"{kind} found only {len(boxes)} of 40 rendered faces"
        g = fit_geometry(boxes, crops)
        # Fitted framing overlaps the training crop clearly better than the margin-only one.
        assert mean_iou(boxes, crops, g) > mean_iou(boxes, crops, margin) + 0.05, kind
    # FER2013 was cropped by a Haar-like detector: its box is the training crop, give or take.
    assert fit_geometry(*pairs["haar"]).scale == pytest.approx(1.0, abs=0.06)
    # YuNet's box is taller than wide: the square is wider than its geometric mean side.
    assert fit_geometry(*pairs["yunet"]).scale > 1.05


# --- the bundle carries it, the daemon uses it -----------------------------------------------------


def copy_bundle(tmp_path: Path, **change) -> Path:
    src = default_bundle_path()
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    meta = json.loads(src.with_suffix(".json").read_text())
    for key, value in change.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    dst.with_suffix(".json").write_text(json.dumps(meta))
    return dst


def test_the_shipped_bundle_records_a_geometry_per_detector() -> None:
    bundle = load_bundle()
    for kind in ("haar", "yunet"):
        assert kind in bundle.crop_geometry and bundle.crop_geometry[kind].basis == "geomean"
        assert bundle.geometry_for(kind) == bundle.crop_geometry[kind]


@pytest.mark.parametrize("kind", ["haar", "yunet"])
def test_the_daemon_frames_faces_with_the_bundles_geometry_for_its_detector(tmp_path: Path, kind: str) -> None:
    from edge import daemon

    g = CropGeometry(1.3, 0.05, -0.1)
    path = copy_bundle(tmp_path, crop_geometry={kind: g._asdict(), "fitted_on": "a note, not a detector"})
    settings = EdgeSettings(classifier={"model": path}, detector={"kind": kind})
    assert daemon.build(settings, sinks=[]).pipeline.geometry == g


def test_a_bundle_without_geometry_keeps_the_margin_framing(tmp_path: Path) -> None:
    from edge import daemon

    path = copy_bundle(tmp_path, crop_geometry=None, crop_margin=0.15)
    pipeline = daemon.build(EdgeSettings(classifier={"model": path}), sinks=[]).pipeline
    assert pipeline.geometry == CropGeometry.from_margin(0.15)


@pytest.mark.parametrize("bad", [{"yunet": {"dx": 0.1}}, {"yunet": {"scale": 9.0}}, {"yunet": {"scale": 1.0, "basis": "w"}}, [1]])
def test_a_malformed_geometry_names_the_field_and_the_tool(tmp_path: Path, bad) -> None:
    with pytest.raises(BundleError, match="crop_geometry"):
        load_bundle(copy_bundle(tmp_path, crop_geometry=bad))


# --- the end-to-end accuracy benchmark -------------------------------------------------------------


def test_bench_faces_reports_detection_and_framing_on_val_faces() -> None:
    fer_faces("val", 1)
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "bench", "--faces", str(FER / "val.npz"), "--limit", "60", "--json",
         "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["faces"] == 60 and r["detector"] == "yunet"
    assert r["geometry"] == load_bundle().crop_geometry["yunet"]._asdict()
    assert r["found"] >= 45, r
    assert r["top1_end_to_end_all"] <= r["top1_end_to_end_found"]
    assert r["framing_loss_points"] == pytest.approx(100 * (r["top1_plain_found"] - r["top1_end_to_end_found"]), abs=0.02)
    assert 0 < r["framing_loss_se_points"] < 10
    # The plain crops are the model on val itself: about its published top-1.
    assert 0.5 < r["top1_plain_all"] < 0.9


def test_bench_faces_with_a_file_that_is_not_faces_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    out = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--faces", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 78
    assert "--faces" in out.stderr and "Traceback" not in out.stderr
