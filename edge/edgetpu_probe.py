"""Try the Coral Edge TPU runtime in a throw-away child process before the daemon loads it.

Google's last libedgetpu (16.0, ``libedgetpu1-std``) is reported to segfault with
TFLite runtimes newer than 2.11, and a segfault inside ``load_delegate`` takes the
whole daemon down before any event (under systemd: a restart loop). So the daemon
first starts ``python -m edge.edgetpu_probe``, which loads the delegate and runs one
inference on the compiled model. Only when that child exits cleanly is the delegate
loaded in the daemon itself.

The module imports only the standard library at the top: the daemon imports it
for :class:`AcceleratorUnavailable`, and the child imports numpy and the runtime
itself.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

EDGETPU_LIB = "libedgetpu.so.1"
# Importing numpy and LiteRT takes 1-2 s on a Pi 4 and a USB Accelerator's first
# use uploads its firmware (about 1 s); a healthy probe ends well within this.
PROBE_TIMEOUT_S = 10.0
RUNTIMES = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
MATCHED_RUNTIME_FIX = (
    "install a Coral runtime built against TFLite 2.17 or newer, e.g. the community libedgetpu1-std "
    "builds for Bookworm/Trixie arm64 at https://github.com/feranick/libedgetpu/releases "
    "(sudo deploy/install.sh --with-coral does it), or set classifier.delegate = \"cpu\""
)

# Exit codes of the child, besides 0 (delegate loaded and one inference ran).
CHILD_NO_DELEGATE = 3  # load_delegate raised: no runtime, or no accelerator attached
CHILD_BAD_MODEL = 4  # the delegate loaded but the compiled model did not run
CHILD_NO_RUNTIME = 5  # the TFLite runtime the daemon uses is not importable in the child


class AcceleratorUnavailable(RuntimeError):
    """The Edge TPU runtime crashed or hung in the probe; with delegate = "edgetpu" the daemon exits 69.

    EX_UNAVAILABLE rather than EX_CONFIG: the setting is right, the runtime
    installed beside it is not, and systemd's Restart= retries once it is fixed.
    """


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    # True when the child died by a signal, hung or failed in an unexpected way:
    # the runtime would have done the same inside the daemon.
    crashed: bool
    message: str


def runtime_version(library: str = EDGETPU_LIB, env: dict[str, str] | None = None) -> str:
    """What is known of the installed libedgetpu: the dpkg package and version, and the file it resolves to."""
    env = dict(os.environ if env is None else env)
    parts = []
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status} ${Package} ${Version}\\n", "libedgetpu1-*"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
        parts += [" ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("installed ")]
    except (OSError, subprocess.SubprocessError):
        pass  # not a Debian system, or no dpkg: the file name is all there is
    path = resolve_library(library, env)
    if path is not None:
        real = path.resolve()
        parts.append(str(real) if real == path else f"{path} -> {real.name}")
    return ", ".join(parts) if parts else "version unknown"


def resolve_library(library: str, env: dict[str, str]) -> Path | None:
    """The file dlopen() would load for ``library``, in the dynamic loader's order (approximately)."""
    if "/" in library:
        return Path(library) if Path(library).exists() else None
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    try:
        cache = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=5, check=False).stdout
        dirs += [str(Path(m).parent) for m in re.findall(rf"^\s*{re.escape(library)} .*=> (\S+)$", cache, re.M)]
    except (OSError, subprocess.SubprocessError):
        pass
    dirs += ["/lib", "/usr/lib", "/usr/local/lib", "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
    for d in dirs:
        candidate = Path(d) / library
        if candidate.exists():
            return candidate
    return None


def _tflite_version(runtime: str) -> str:
    try:
        from importlib.metadata import version

        return f"{runtime} {version(runtime)}"
    except Exception:
        return runtime


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def probe(
    compiled: Path, device: str = "", runtime: str = "ai-edge-litert", library: str = EDGETPU_LIB,
    timeout: float = PROBE_TIMEOUT_S,
) -> ProbeResult:
    """Load the delegate and run one inference on ``compiled`` in a child process; never raises."""
    env = dict(os.environ)
    # The child imports this module by name: put the edge package the daemon runs
    # from first on its path, whatever the daemon's own sys.path looked like.
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "edge.edgetpu_probe", "--runtime", runtime, "--library", library,
           "--device", device, str(compiled)]
    what = f"loading {library} ({runtime_version(library, env)}) and running one inference on {compiled.name}"
    try:
        child = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, True, (
            f"Edge TPU probe: {what} did not finish within {timeout:g} s, so the probe process was killed; "
            f"a runtime that does not match {_tflite_version(runtime)} can hang like this (so can a stuck USB "
            f"Accelerator: replug it). Fix: {MATCHED_RUNTIME_FIX}"
        ))
    except OSError as exc:
        return ProbeResult(False, True, f"Edge TPU probe: cannot start {sys.executable}: {exc}")
    detail = (child.stderr.strip().splitlines() or [""])[-1]
    if child.returncode == 0:
        return ProbeResult(True, False, f"Edge TPU probe: {what}: OK")
    if child.returncode < 0:
        return ProbeResult(False, True, (
            f"Edge TPU probe: {what} killed the probe process with {_signal_name(-child.returncode)}; "
            f"this Coral runtime does not work with {_tflite_version(runtime)} (Google's last libedgetpu, "
            f"16.0, is known to crash with TFLite newer than 2.11). Fix: {MATCHED_RUNTIME_FIX}"
        ))
    if child.returncode == CHILD_NO_DELEGATE:
        # The ordinary "no runtime / no accelerator" case, as load_delegate words it.
        return ProbeResult(False, False, detail)
    if child.returncode == CHILD_BAD_MODEL:
        return ProbeResult(False, True, f"Edge TPU probe: the delegate loaded but {compiled.name} did not run: {detail}")
    return ProbeResult(False, True, f"Edge TPU probe: {what} failed (exit status {child.returncode}): {detail}")


def _child(argv: list[str] | None = None) -> int:
    """The child's side: load, allocate, invoke once. Crashes here are the point of the exercise."""
    p = argparse.ArgumentParser(prog="python -m edge.edgetpu_probe", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="the compiled NAME_edgetpu.tflite")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="ai-edge-litert")
    p.add_argument("--library", default=EDGETPU_LIB)
    p.add_argument("--device", default="")
    args = p.parse_args(argv)
    import importlib

    try:
        import numpy as np

        module = importlib.import_module(RUNTIMES[args.runtime])
    except ImportError as exc:
        print(f"{args.runtime} is not importable: {exc}", file=sys.stderr)
        return CHILD_NO_RUNTIME
    try:
        delegate = module.load_delegate(args.library, {"device": args.device} if args.device else {})
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{args.library}: {exc}", file=sys.stderr)
        return CHILD_NO_DELEGATE
    try:
        interp = module.Interpreter(model_path=str(args.model), experimental_delegates=[delegate])
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        interp.invoke()
        interp.get_tensor(interp.get_output_details()[0]["index"])
    except (ValueError, RuntimeError) as exc:
        print(f"{exc}".strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__, file=sys.stderr)
        return CHILD_BAD_MODEL
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(_child())
