"""Small CLI promises a new user relies on: --version, --model DIR, config --reference as TOML, quiet native
libraries, bench without faces, the package metadata."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge
from edge.cli import main
from edge.settings import EdgeSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_JSON = ROOT / "edge" / "models" / "deepfer_fernet_int8.json"
# Lines the daemon itself writes to stderr: its log format, or "deepfer-edge: …" for settings errors.
OWN_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) |deepfer-edge: )")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("DEEPFER_"):
            monkeypatch.delenv(k)


def run_cli(*argv: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPFER_", "OPENCV_"))}
    code = prelude + "\nimport sys\nfrom edge.cli import main\nsys.argv = ['deepfer-edge'] + sys.argv[1:]\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


BLOCK_HEAVY = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'cv2', 'paho', 'ai_edge_litert', 'tflite_runtime', 'numpy', 'tensorflow'}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
"""


def test_version_names_the_package_and_the_shipped_model_without_heavy_imports():
    r = run_cli("--version", prelude=BLOCK_HEAVY)
    assert r.returncode == 0, r.stderr
    meta = json.loads(SHIPPED_JSON.read_text())

    assert r.stdout.splitlines() == [f"deepfer-edge {edge.__version__}", f"model {meta['name']} v{meta['version']}"]


def test_model_may_name_the_folder_holding_a_bundle(tmp_path, capsys):
    from edge.bundle import load_bundle

    shipped = load_bundle()
    assert load_bundle(shipped.tflite.parent).tflite == shipped.tflite
    assert main(["check", "--camera", "demo", "--model", str(shipped.tflite.parent), "--json"]) == 0
    model = json.loads(capsys.readouterr().out)[0]
    assert model["ok"] and shipped.version in model["detail"]


def test_model_folder_without_one_bundle_says_so(tmp_path, capsys):
    assert main(["--camera", "demo", "--model", str(tmp_path), "--max-frames", "1"]) == 78
    err = capsys.readouterr().err
    assert "is a folder without a model bundle" in err and "does not exist" not in err
    shipped = ROOT / "edge" / "models" / "deepfer_fernet_int8"
    for name in ("a", "b"):
        for suffix in (".tflite", ".json"):
            (tmp_path / f"{name}{suffix}").write_bytes(shipped.with_suffix(suffix).read_bytes())
    assert main(["--camera", "demo", "--model", str(tmp_path), "--max-frames", "1"]) == 78
    assert "holds several bundles (a.tflite, b.tflite)" in capsys.readouterr().err


def test_reference_is_toml_that_loads_as_the_defaults(tmp_path, capsys):
    assert main(["config", "--reference"]) == 0
    out = capsys.readouterr().out
    assert "False" not in out and "None" not in out and "PosixPath" not in out
    parsed = tomllib.loads(out)
    defaults = EdgeSettings(device_id="x").model_dump(mode="json")
    for name, f in EdgeSettings.model_fields.items():
        sub = getattr(f.annotation, "model_fields", None)
        if sub is None:
            if name != "device_id":  # the host name: shown commented out
                assert parsed[name] == defaults[name]
            continue
        for key in sub:
            if defaults[name][key] is None:  # unset: TOML has no null, so the line is a comment
                assert key not in parsed[name] and f"# {key} =" in out
            else:
                assert parsed[name][key] == defaults[name][key], f"{name}.{key}"
    (tmp_path / "reference.toml").write_text(out)
    assert load_settings(tmp_path / "reference.toml").model_dump() == load_settings().model_dump()


@pytest.mark.parametrize("source", ["junk.mp4", "rtsp://127.0.0.1:1/none"])
def test_bad_streams_and_files_get_only_the_clean_error(tmp_path, source):
    if source == "junk.mp4":
        (tmp_path / source).write_bytes(b"not a video" * 100)
        source = str(tmp_path / source)
    r = run_cli("--camera", source, "--stdout", "--max-frames", "1")
    assert r.returncode in (69, 78), r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(OWN_LINE.match(line) for line in lines), r.stderr
    assert "cannot be" in r.stderr  # the daemon's own sentence is there


def test_the_runtime_banner_is_not_printed():
    r = run_cli("check", "--camera", "demo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "XNNPACK" not in r.stderr and "XNNPACK" not in r.stdout
    assert all(OWN_LINE.match(line) for line in r.stderr.strip().splitlines()), r.stderr


def test_other_native_stderr_output_still_gets_through():
    code = (
        "import os\nfrom edge.classifier import without_runtime_banner\n"
        "with without_runtime_banner():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nERROR: real trouble\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "ERROR: real trouble\nafter\n"


def test_bench_without_a_face_shows_no_per_face_time(tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "gray.png"), np.full((240, 320, 3), 128, np.uint8))
    r = run_cli("bench", "--camera", str(folder), "--frames", "10", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["face_found_ratio"] == 0 and result["classifier_ms_per_face"] is None
    r = run_cli("bench", "--camera", str(folder), "--frames", "10")
    assert "no face found, so no per-face time" in r.stdout and "ms per face" not in r.stdout


def test_license_is_an_spdx_expression_for_a_setuptools_that_reads_it():
    from packaging.licenses import canonicalize_license_expression
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    license = project["project"]["license"]
    assert isinstance(license, str) and canonicalize_license_expression(license) == license  # not the deprecated table
    setuptools = next(Requirement(r) for r in project["build-system"]["requires"] if r.startswith("setuptools"))
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77.0")  # PEP 639 support


def test_the_package_has_one_version_source() -> None:
    import tomllib
    from importlib import metadata

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "edge.__version__"}
    assert metadata.version("deepfer") == edge.__version__  # what pip installed says the same
