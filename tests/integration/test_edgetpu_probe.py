"""A Coral runtime that crashes or hangs cannot take the daemon down (edge/edgetpu_probe.py).

No Edge TPU here: stand-ins for libedgetpu.so.1 are compiled from
tests/standins/libedgetpu_standin.c with gcc and found by the dynamic loader
through LD_LIBRARY_PATH, exactly as load_delegate("libedgetpu.so.1") finds the
real one. The crashes are real: a constructor that raises SIGSEGV on load, one
that never returns. Every daemon run is a real `python -m edge.cli` process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.edgetpu_probe import PROBE_TIMEOUT_S, probe, runtime_version

REPO = Path(__file__).resolve().parents[2]
STANDIN_SRC = REPO / "tests" / "standins" / "libedgetpu_standin.c"
SHIPPED = REPO / "edge" / "models" / "deepfer_fernet_int8.tflite"
EX_UNAVAILABLE = 69

pytest.importorskip("ai_edge_litert", reason="the probe child runs LiteRT (pip install ai-edge-litert)")


@pytest.fixture(scope="session")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Directory holding libedgetpu.so.1 for each behaviour: SEGV, HANG, NODEVICE, HEALTHY."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (apt-get install gcc); the stand-in runtimes are compiled from C")
    root = tmp_path_factory.mktemp("libedgetpu")
    dirs = {}
    for kind in ("SEGV", "HANG", "NODEVICE", "HEALTHY"):
        d = root / kind.lower()
        d.mkdir()
        subprocess.run([gcc, "-shared", "-fPIC", "-Wall", "-Werror", f"-DSTANDIN_{kind}", "-o", str(d / "libedgetpu.so.1"),
                        str(STANDIN_SRC)], check=True, timeout=60)
        dirs[kind] = d
    return dirs


@pytest.fixture
def compiled_bundle(tmp_path: Path) -> Path:
    """The shipped bundle copied to tmp with a stand-in for its compiled twin NAME_edgetpu.tflite.

    The delegate path is only tried when the compiled model exists; the healthy
    stand-in delegate claims no nodes, so the CPU model runs in its place.
    """
    for suffix in (".tflite", ".json"):
        shutil.copy(SHIPPED.with_suffix(suffix), tmp_path / SHIPPED.with_suffix(suffix).name)
    shutil.copy(SHIPPED, tmp_path / f"{SHIPPED.stem}_edgetpu.tflite")
    return tmp_path / SHIPPED.name


def env_with(libdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFER_")}
    env["LD_LIBRARY_PATH"] = str(libdir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def daemon(libdir: Path, model: Path, delegate: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge.cli", "--camera", "demo", "--stdout", "--max-frames", "40",
           "--delegate", delegate, "--model", str(model)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env_with(libdir), cwd=REPO)


def messages(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# --- the stand-ins are what they claim -------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [("SEGV", -11), ("HANG", None)])
def test_stand_in_runtime_really_kills_or_hangs_a_process_that_loads_it(standins, kind, expected):
    # Without this the tests below could pass against a library that does nothing.
    cmd = [sys.executable, "-c", "import ctypes; ctypes.CDLL('libedgetpu.so.1')"]
    if expected is None:
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run(cmd, env=env_with(standins[kind]), timeout=3, capture_output=True)
    else:
        assert subprocess.run(cmd, env=env_with(standins[kind]), timeout=30, capture_output=True).returncode == expected


# --- the probe -------------------------------------------------------------------


def test_probe_names_the_signal_the_runtime_file_and_the_fix(standins, compiled_bundle, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(standins["SEGV"]))
    result = probe(compiled_bundle.with_name(f"{SHIPPED.stem}_edgetpu.tflite"))
    assert not result.ok and result.crashed
    assert "SIGSEGV (signal 11)" in result.message
    assert str(standins["SEGV"] / "libedgetpu.so.1") in result.message  # which runtime
    assert "ai-edge-litert" in result.message  # against which TFLite
    assert "16.0" in result.message and "feranick/libedgetpu/releases" in result.message  # and the fix


def test_probe_kills_a_hanging_runtime_after_its_timeout(standins, compiled_bundle, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(standins["HANG"]))
    t0 = time.monotonic()
    result = probe(compiled_bundle.with_name(f"{SHIPPED.stem}_edgetpu.tflite"), timeout=2)
    assert time.monotonic() - t0 < 10
    assert not result.ok and result.crashed
    assert "did not finish within 2 s" in result.message and "feranick" in result.message


def test_probe_passes_a_working_runtime(standins, compiled_bundle, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(standins["HEALTHY"]))
    result = probe(compiled_bundle.with_name(f"{SHIPPED.stem}_edgetpu.tflite"))
    assert result.ok and not result.crashed, result.message


def test_absent_accelerator_is_an_ordinary_failure_not_a_crash(standins, compiled_bundle, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(standins["NODEVICE"]))
    result = probe(compiled_bundle.with_name(f"{SHIPPED.stem}_edgetpu.tflite"))
    assert not result.ok and not result.crashed
    assert "no Edge TPU attached" in result.message


def test_runtime_version_follows_the_library_to_its_versioned_file(tmp_path):
    real = tmp_path / "libedgetpu.so.1.0"
    real.write_bytes(b"")
    (tmp_path / "libedgetpu.so.1").symlink_to(real.name)
    assert f"{tmp_path / 'libedgetpu.so.1'} -> libedgetpu.so.1.0" in runtime_version(env={"LD_LIBRARY_PATH": str(tmp_path)})


# --- the daemon ------------------------------------------------------------------


def test_auto_survives_a_segfaulting_runtime_and_runs_on_the_cpu(standins, compiled_bundle):
    result = daemon(standins["SEGV"], compiled_bundle, "auto")
    assert result.returncode == 0, result.stderr
    msgs = messages(result.stdout)
    assert any(m["topic"] == "events" and m["payload"]["type"] == "track_started" for m in msgs)
    assert [m["payload"]["backend"] for m in msgs if m["topic"] == "stats"] == ["cpu"]
    assert "SIGSEGV" in result.stderr and "running on the CPU" in result.stderr and "feranick" in result.stderr
    assert "Traceback" not in result.stderr


def test_edgetpu_with_a_segfaulting_runtime_exits_69_with_one_line(standins, compiled_bundle):
    result = daemon(standins["SEGV"], compiled_bundle, "edgetpu")
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "SIGSEGV" in errors[0] and "feranick" in errors[0]
    assert "Traceback" not in result.stderr and "Fatal Python error" not in result.stderr
    assert messages(result.stdout) == []


def test_edgetpu_with_a_hanging_runtime_exits_69_after_the_probe_timeout(standins, compiled_bundle):
    t0 = time.monotonic()
    result = daemon(standins["HANG"], compiled_bundle, "edgetpu")
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    assert time.monotonic() - t0 < PROBE_TIMEOUT_S + 30
    assert f"did not finish within {PROBE_TIMEOUT_S:g} s" in result.stderr


def test_auto_uses_a_working_runtime(standins, compiled_bundle):
    result = daemon(standins["HEALTHY"], compiled_bundle, "auto")
    assert result.returncode == 0, result.stderr
    assert [m["payload"]["backend"] for m in messages(result.stdout) if m["topic"] == "stats"] == ["edgetpu"]
    assert "Edge TPU probe: " in result.stderr and ": OK" in result.stderr


def test_auto_without_a_compiled_model_never_touches_the_runtime(standins):
    # The shipped bundle has no NAME_edgetpu.tflite: the crashing runtime must not even be probed.
    result = daemon(standins["SEGV"], SHIPPED, "auto")
    assert result.returncode == 0, result.stderr
    assert "no Edge TPU model" in result.stderr and "probe" not in result.stderr
