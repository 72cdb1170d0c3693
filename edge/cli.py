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
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from edge.settings import EX_CONFIG, ConfigError, EdgeSettings, load_settings

log = logging.getLogger("deepfer.edge")

EX_UNAVAILABLE = 69  # sysexits.h: the camera may come back, so a supervisor should retry

COMMANDS = ("run", "check", "bench", "config", "watch")
EPILOG = """\
commands:
  run      (default) process frames and publish emotion events
  check    open the camera, load the model, reach the broker; say what is wrong
  bench    per-stage latency and throughput on this device (use a clip: --camera clip.mp4)
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
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepfer-edge",
        description="Facial emotion recognition at the edge: camera frames in, emotion events out (MQTT, stdout).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", choices=COMMANDS, default="run", help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, metavar="TOML", help="settings file (e.g. /etc/deepfer/edge.toml)")
    g = p.add_argument_group("camera")
    g.add_argument("--camera", metavar="SRC", help="csi | usb:N | /dev/videoN | rtsp://… | http://… | video file | image folder | demo")
    g.add_argument("--loop", action="store_true", default=None, help="loop a video file or image folder")
    g = p.add_argument_group("model and detector")
    g.add_argument("--model", type=Path, metavar="TFLITE", help="model bundle (.tflite with its .json); default: the shipped model")
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
    g.add_argument("--json", action="store_true", help="bench/check/config: print JSON")
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


def settings_reference() -> str:
    lines = []
    for name, f in EdgeSettings.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            lines.append(f"[{name}]  {f.description or ''}")
            for sub, sf in ann.model_fields.items():
                default = sf.get_default(call_default_factory=True)
                lines.append(f"  {name}.{sub} = {default!r}\n      {sf.description}")
        else:
            lines.append(f"{name}  {f.description}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config" and args.reference:
        sys.stdout.write(settings_reference() + "\n")
        return 0
    try:
        settings = load_settings(args.config, overrides_from_args(args))
        if settings.mqtt.password is None and settings.mqtt.password_file is None:
            from edge.notify import read_credential

            # systemd's LoadCredential= hands the password over as a file, never on the command line.
            secret = read_credential("mqtt_password", os.environ)
            if secret:
                settings.mqtt.password = SecretStr(secret)
    except ConfigError as exc:
        sys.stderr.write(f"deepfer-edge: {exc}\n")
        return EX_CONFIG
    setup_logging(settings.log_level)
    if args.command == "config":
        sys.stdout.write(json.dumps(settings.model_dump(mode="json"), indent=2) + "\n")
        return 0
    from edge.protocols import CameraUnavailable, MissingExtra, SourceError
    from edge.bundle import BundleError
    from edge.edgetpu_probe import AcceleratorUnavailable

    try:
        if args.command == "watch":
            from edge.watch import watch

            return watch(settings, device=args.device, duration=args.duration)
        if args.command == "check":
            from edge.check import check

            return check(settings, as_json=args.json)
        if args.command == "bench":
            from edge.bench import bench

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
    return daemon.run(components, notifier=SystemdNotifier(os.environ), max_frames=max_frames)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
