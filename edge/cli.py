"""``deepfer-edge``: run the daemon, check a set-up, benchmark it, or show the configuration.

Only the standard library and the settings model are imported at start-up, so
``--help`` works before any optional dependency is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edge.settings import EX_CONFIG, ConfigError, EdgeSettings, load_settings, service_manager_environment

log = logging.getLogger("deepfer.edge")

EX_UNAVAILABLE = 69  # sysexits.h: the camera may come back, so a supervisor should retry

COMMANDS = ("run", "analyze", "check", "bench", "config", "watch")
EPILOG = """\
commands:
  run      (default) process frames and publish emotion events
  analyze  PATH...: the emotions in photos, videos and folders of them, as a table,
           --json lines or --csv; --annotate DIR writes copies with faces labelled
  check    open the camera, load the model, reach the broker; say what is wrong
  bench    per-stage latency and throughput on this device (use a clip: --camera clip.mp4);
           with --faces val.npz: end-to-end accuracy of detection, framing and model
  config   print the effective settings (secrets hidden), or --reference for every field
  watch    live terminal view of devices, faces and emotions from the broker

settings come from (lowest to highest): --config TOML < DEEPFER_* environment
(nested with __, e.g. DEEPFER_MQTT__HOST=broker.local) < these flags.

examples:
  deepfer-edge --camera demo --stdout
  deepfer-edge --camera csi --mqtt-host broker.local
  deepfer-edge --camera clip.mp4 --stdout --mqtt-host broker.local
  deepfer-edge --config /etc/deepfer/edge.toml
  deepfer-edge check --config /etc/deepfer/edge.toml
  deepfer-edge bench --camera clip.mp4
  deepfer-edge analyze party.jpg holiday/ clip.mp4 --json --annotate out/
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfer-edge",
        description="Facial emotion recognition at the edge: camera frames in, emotion events out (MQTT, stdout).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", choices=COMMANDS, default="run", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--version", action="store_true", help="print the package and shipped model versions, then exit")
    p.add_argument("--config", type=Path, metavar="TOML", help="settings file (e.g. /etc/deepfer/edge.toml)")
    g = p.add_argument_group("camera")
    g.add_argument("--camera", metavar="SRC", help="csi | usb:N | /dev/videoN | rtsp://… | http://… | video file | image folder | demo")
    g.add_argument("--loop", action="store_true", default=None, help="loop a video file or image folder")
    g = p.add_argument_group("model and detector")
    g.add_argument("--model", type=Path, metavar="TFLITE",
                   help="model bundle (.tflite with its .json, or the folder holding one); default: the shipped model")
    g.add_argument("--delegate", choices=("cpu", "edgetpu", "auto"), help="run the classifier on the CPU or a Coral Edge TPU")
    g.add_argument("--threads", type=int, help="CPU threads for the classifier")
    g.add_argument("--detector", choices=("haar", "yunet"), help="face detector")
    g.add_argument("--detector-model", type=Path, metavar="ONNX", help="YuNet model file (with --detector yunet)")
    g = p.add_argument_group("output")
    g.add_argument("--stdout", action="store_true", default=None, help="write every message as a JSON line to stdout")
    g.add_argument("--mqtt-host", metavar="HOST", help="publish to this MQTT broker (enables MQTT)")
    g.add_argument("--mqtt-port", type=int, metavar="PORT")
    g.add_argument("--mqtt-username", metavar="USER")
    g.add_argument("--device-id", metavar="ID", help="name in topics and payloads (default: host name)")
    g.add_argument("--prefix", metavar="PREFIX", help="MQTT topic prefix (default: deepfer)")
    g = p.add_argument_group("misc")
    g.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    g.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N processed frames (0 = no limit)")
    g.add_argument("--frames", type=int, default=300, metavar="N", help="bench: frames to measure (after 20 warm-up frames)")
    g.add_argument("--faces", type=Path, metavar="NPZ",
                   help="bench: end-to-end accuracy instead of speed, on a clip rendered from these labelled 48x48 faces "
                        "(e.g. FER2013 val.npz; never training faces)")
    g.add_argument("--limit", type=int, default=0, metavar="N", help="bench --faces: use N faces drawn at random (0 = all)")
    g.add_argument("--json", action="store_true", help="analyze/bench/check/config: print JSON (analyze: one line per file)")
    g.add_argument("--csv", action="store_true", help="analyze: CSV, one row per face of a photo and per track and frame of a video")
    g.add_argument("--annotate", type=Path, metavar="DIR", help="analyze: write copies of the photos and videos with faces labelled")
    g.add_argument("--reference", action="store_true", help="config: list every setting with its description and default")
    g.add_argument("--device", metavar="ID", help="watch: show only this device")
    g.add_argument("--duration", type=float, default=0.0, metavar="S", help="watch: stop after S seconds (0 = until Ctrl-C)")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        *parents, leaf = path.split(".")
        node = o
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    put("camera.source", args.camera)
    put("camera.loop", args.loop)
    put("classifier.model", args.model)
    put("classifier.delegate", args.delegate)
    put("classifier.threads", args.threads)
    put("detector.kind", args.detector)
    put("detector.model", args.detector_model)
    put("stdout.enabled", args.stdout)
    if args.mqtt_host:
        put("mqtt.enabled", True)
    put("mqtt.host", args.mqtt_host)
    put("mqtt.port", args.mqtt_port)
    put("mqtt.username", args.mqtt_username)
    put("mqtt.prefix", args.prefix)
    put("device_id", args.device_id)
    put("log_level", args.log_level)
    return o


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def toml_value(value: Any) -> str | None:
    """``value`` as a TOML literal; None when TOML cannot spell it (an unset setting)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # JSON string escapes are valid in TOML basic strings.
    return json.dumps(str(value), ensure_ascii=False)


def _reference_entry(key: str, field: Any, default: Any, machine_default: bool = False) -> list[str]:
    lines = [f"# {field.description}"]
    literal = toml_value(default)
    if literal is None:
        lines.append(f"# {key} =  (unset by default)")
    elif machine_default:
        lines.append(f"# {key} = {literal}  (default: this machine's host name)")
    else:
        lines.append(f"{key} = {literal}")
    return lines


def settings_reference() -> str:
    """Every setting with its description and default, as a TOML file that loads as the defaults."""
    top, sections = [], []
    for name, f in EdgeSettings.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            sections += ["", f"[{name}]  # {f.description}"]
            for sub, sf in ann.model_fields.items():
                sections += _reference_entry(sub, sf, sf.get_default(call_default_factory=True))
        else:
            top += _reference_entry(name, f, f.get_default(call_default_factory=True), machine_default=name == "device_id")
    header = [
        "# deepfer-edge settings reference: every setting with its default, as a --config TOML file.",
        "# Environment: DEEPFER_<NAME> at the top level, DEEPFER_<SECTION>__<NAME> in a section.",
    ]
    return "\n".join(header + top + sections)


def version_text() -> str:
    """The package version and the shipped model's, without importing OpenCV or a TFLite runtime."""
    from edge import __version__ as package
    from edge.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle()
        model = f"{bundle.name} v{bundle.version}"
    except BundleError as exc:
        model = f"unavailable ({exc})"
    return f"deepfer-edge {package}\nmodel {model}"


def quiet_native_libraries() -> None:
    """Keep OpenCV's and FFmpeg's own warning lines off stderr; the daemon says what went wrong itself.

    Both libraries read these when they start, so this must run before cv2 is
    imported; a value already in the environment wins (to debug a camera).
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        sys.stdout.write(version_text() + "\n")
        return 0
    if args.paths and args.command != "analyze":
        parser.error(f"unexpected argument {args.paths[0]} (only analyze takes paths; the camera is --camera SRC)")
    if args.json and args.csv:
        parser.error("choose one of --json and --csv")
    if args.command == "config" and args.reference:
        sys.stdout.write(settings_reference() + "\n")
        return 0
    quiet_native_libraries()
    try:
        settings = load_settings(args.config, overrides_from_args(args))
    except ConfigError as exc:
        sys.stderr.write(f"deepfer-edge: {exc}\n")
        return EX_CONFIG
    setup_logging(settings.log_level)
    if args.command == "config":
        sys.stdout.write(json.dumps(settings.model_dump(mode="json"), indent=2) + "\n")
        return 0
    from edge.bundle import BundleError
    from edge.edgetpu_probe import AcceleratorUnavailable
    from edge.protocols import CameraUnavailable, MissingExtra, SourceError

    try:
        if args.command == "watch":
            from edge.watch import watch

            return watch(settings, device=args.device, duration=args.duration)
        if args.command == "analyze":
            from edge.analyze import analyze

            fmt = "json" if args.json else "csv" if args.csv else "text"
            return analyze(settings, args.paths, fmt, args.annotate)
        if args.command == "check":
            from edge.check import check

            return check(settings, as_json=args.json)
        if args.command == "bench":
            from edge.bench import bench

            if args.faces is not None:
                from edge.bench import bench_accuracy

                return bench_accuracy(settings, args.faces, limit=args.limit, as_json=args.json)
            return bench(settings, frames=args.frames, as_json=args.json)
        return run(settings, max_frames=args.max_frames)
    except (CameraUnavailable, AcceleratorUnavailable) as exc:
        log.error("%s", exc)
        return EX_UNAVAILABLE
    except (ConfigError, BundleError, MissingExtra, SourceError) as exc:
        log.error("%s", exc.args[0] if exc.args else exc)
        return EX_CONFIG


def run(settings: EdgeSettings, max_frames: int = 0) -> int:
    import faulthandler

    from edge import daemon
    from edge.notify import SystemdNotifier

    # systemd's watchdog kills with SIGABRT: the journal then shows where every thread hung.
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError):  # stderr without a file descriptor (embedded, captured)
        log.debug("faulthandler not enabled: stderr has no file descriptor")

    if not settings.stdout.enabled and not settings.mqtt.enabled:
        log.warning("no output enabled: pass --stdout and/or --mqtt-host (or set them in the config); events go nowhere")
    components = daemon.build(settings)
    return daemon.run(components, notifier=SystemdNotifier(service_manager_environment()), max_frames=max_frames)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
