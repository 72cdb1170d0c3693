"""The daemon's one settings tree.

Precedence, lowest to highest: defaults < TOML file (``--config``) <
``DEEPFER_*`` environment variables (nested with ``__``, e.g.
``DEEPFER_MQTT__HOST``) < command-line flags. Each component receives only its
own section; nothing outside this module reads the environment.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal


from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "DEEPFER_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Settings that existed once: old name -> what replaced it, said to whoever still sets the old one.
    RENAMED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in data if k in cls.RENAMED]
            if old:
                raise ValueError("; ".join(f"{k} is no longer a setting: {cls.RENAMED[k]}" for k in old))
        return data


class CameraSettings(Section):
    source: str = Field(
        "demo",
        description="Where frames come from: 'csi' (picamera2), 'usb:N' or /dev/videoN, rtsp://… or http://… "
        "streams, a video file, an image folder, or 'demo' (a generated clip, no camera needed).",
    )
    width: int = Field(640, ge=16, le=8192, description="Requested capture width in pixels (live cameras).")
    height: int = Field(480, ge=16, le=8192, description="Requested capture height in pixels (live cameras).")
    fps: float = Field(15.0, gt=0, le=240, description="Requested capture rate (live cameras); the frame rate of the demo clip "
                       "and of an image folder played as a sequence.")
    lores_width: int = Field(320, ge=16, le=4096, description="CSI only: width of the low-resolution YUV stream used for detection.")
    loop: bool = Field(False, description="Restart a video file or image folder at its end instead of stopping.")
    realtime: bool | None = Field(None, description="Play a video file, the demo or an image sequence at its own rate, like a camera "
                                  "(frames that fall behind are dropped); false: as fast as processed, on the recording's own "
                                  "timeline either way. Empty = on for the demo, off for files.")
    sequence: bool = Field(False, description="An image folder is the frames of one time-lapse (camera.fps apart) instead of a "
                           "set of separate photos.")
    reopen_backoff_s: float = Field(1.0, gt=0, description="First delay before reopening a vanished camera; doubles up to reopen_backoff_max_s.")
    reopen_backoff_max_s: float = Field(30.0, gt=0, description="Longest delay between attempts to reopen a camera.")
    demo_frames: int = Field(240, ge=1, description="Frames in the generated demo clip.")

    RENAMED: ClassVar[dict[str, str]] = {"demo_realtime": "use camera.realtime (true or false; empty: on for the demo)"}


class DetectorSettings(Section):
    kind: Literal["haar", "yunet"] = Field("yunet", description="Face detector: 'yunet' (CNN, shipped; finds small and turned "
                                           "faces) or 'haar' (OpenCV's frontal-face cascade).")
    model: Path | None = Field(None, description="YuNet ONNX file; empty = the face_detection_yunet_2023mar.onnx shipped in the package.")
    detect_width: int = Field(320, ge=64, le=4096, description="Frames are downscaled to this width for detection; boxes are mapped back.")
    min_face: int = Field(28, ge=8, description="Faces smaller than this many pixels (in the full frame) are ignored.")
    score_threshold: float = Field(0.6, ge=0, le=1, description="YuNet: minimum face score.")
    nms_threshold: float = Field(0.3, gt=0, le=1, description="YuNet: boxes overlapping a better one by more than this IoU are dropped.")
    every_n_frames: int = Field(3, ge=1, description="Run detection every N frames; boxes are carried by the tracker in between.")
    haar_scale_factor: float = Field(1.2, gt=1.0, le=2.0, description="Haar: image pyramid scale step (larger is faster, finds fewer faces).")
    haar_min_neighbors: int = Field(5, ge=1, description="Haar: neighbours a candidate needs (larger means fewer false faces).")


class ClassifierSettings(Section):
    model: Path | None = Field(None, description="Model bundle (.tflite with its .json beside it); empty = the model shipped in the package.")
    delegate: Literal["cpu", "edgetpu", "auto"] = Field("cpu", description="'cpu', 'edgetpu' (Coral), or 'auto' (Edge TPU when present, else CPU).")
    edgetpu_device: str = Field("", description="Edge TPU to use when several are attached, e.g. 'usb:0' or 'pci:0'; empty = first found.")
    threads: int = Field(1, ge=1, le=64, description="CPU threads for the TFLite interpreter.")


class TrackerSettings(Section):
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="Minimum box overlap (IoU) to continue a track.")
    max_missed: int = Field(10, ge=0, description="Detection passes a track survives without a matching face before it ends.")
    smoothing_s: float = Field(0.5, ge=0, le=60, description="Time constant (seconds) of each track's moving average of scores "
                               "(0 = no smoothing); the same at any frame rate.")
    hysteresis: float = Field(0.1, ge=0, lt=1, description="A new emotion must lead the current one by this much (smoothed score).")
    min_dwell_s: float = Field(1.0, ge=0, le=600, description="Seconds a new emotion must lead before the track's emotion changes "
                               "(emotion_changed); the shortest an emotion segment can be.")

    RENAMED: ClassVar[dict[str, str]] = {
        "smoothing": "it was a weight per frame, so its meaning changed with the frame rate; use tracker.smoothing_s, a time "
                     "constant in seconds (default 0.5; the old 0.3 at 15 fps is about 0.19)",
        "min_frames": "it counted frames, so its meaning changed with the frame rate; use tracker.min_dwell_s, in seconds "
                      "(default 1.0; the old 3 at 15 fps is 0.2)",
    }


class EventsSettings(Section):
    window_s: float = Field(5.0, gt=0, description="Seconds per state window (faces now, shares, mean scores).")
    stats_interval_s: float = Field(30.0, gt=0, description="Seconds between stats messages.")


class MqttSettings(Section):
    enabled: bool = Field(False, description="Publish to an MQTT broker (set host to enable from the CLI).")
    host: str = Field("localhost", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    username: str | None = Field(None, description="Username for broker authentication.")
    password: SecretStr | None = Field(None, description="Password; prefer password_file or systemd LoadCredential=.")
    password_file: Path | None = Field(None, description="File holding the password (first line); read at start-up.")
    client_id: str = Field("", description="MQTT client id; empty = deepfer-<device_id>.")
    prefix: str = Field("deepfer", description="Topic prefix: topics are {prefix}/{device_id}/….")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval in seconds.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS for events (state and stats are retained at QoS 1).")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA certificate (PEM) to verify the broker; empty = system CAs.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    tls_insecure: bool = Field(False, description="Skip the broker host-name check (testing only).")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay; doubles up to reconnect_max_s.")
    reconnect_max_s: float = Field(60.0, gt=0, description="Longest reconnect delay.")
    queue_size: int = Field(10000, ge=1, description="Events kept while the broker is away; beyond it the oldest are dropped and counted.")
    persist: bool = Field(False, description="Keep undelivered events on disk (in state_dir) across daemon restarts.")
    state_dir: Path = Field(Path("/var/lib/deepfer"), description="Where the persistent queue lives (systemd StateDirectory).")
    homeassistant: bool = Field(False, description="Announce the device to Home Assistant through MQTT discovery.")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant discovery prefix.")


class StdoutSettings(Section):
    enabled: bool = Field(False, description="Write every message as a JSON line to standard output.")


class EdgeSettings(BaseSettings):
    """Root of the settings tree."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True, nested_model_default_partial_update=True
    )

    device_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "deepfer",
                           description="This device's name in topics and payloads; default the host name.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level (stderr).")
    camera: CameraSettings = Field(default_factory=CameraSettings, description="Frame source.")
    detector: DetectorSettings = Field(default_factory=DetectorSettings, description="Face detection.")
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings, description="Emotion classifier.")
    tracker: TrackerSettings = Field(default_factory=TrackerSettings, description="Face tracking and score smoothing.")
    events: EventsSettings = Field(default_factory=EventsSettings, description="Event aggregation windows.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT publishing.")
    stdout: StdoutSettings = Field(default_factory=StdoutSettings, description="JSON lines on standard output.")

    @field_validator("device_id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "/#+ "):
            raise ValueError("must be non-empty and hold no '/', '#', '+' or spaces (it is part of MQTT topics)")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the CLI flags and the TOML file merged (flags win); env sits between them.
        return (init_settings, env_settings)


class ConfigError(Exception):
    """A settings problem a person must fix; the daemon exits with EX_CONFIG (78)."""


EX_CONFIG = 78


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it (see deploy/edge.example.toml) or drop --config") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _strip_env_over_toml(file_values: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """Drop TOML keys that an environment variable sets, so the environment wins over the file.

    pydantic-settings gives init values precedence over the environment; the
    file travels with the init values, so it must give way here instead.
    """
    out: dict[str, Any] = {}
    for key, value in file_values.items():
        env_key = f"{ENV_PREFIX}{key}".upper()
        if env_key in {k.upper() for k in environ}:
            continue
        if isinstance(value, dict):
            nested = {f"{k[len(env_key) + 2:]}": v for k, v in environ.items() if k.upper().startswith(env_key + "__")}
            value = _strip_env_over_toml(value, {f"{ENV_PREFIX}{k}": v for k, v in nested.items()})
        out[key] = value
    return out


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in err["loc"][:-1])
            where = f"section [{section}]" if section else "the top level"
            lines.append(f"{loc}: unknown setting in {where}; check its spelling (deepfer-edge config --reference lists them)")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}{shown}")
    return f"invalid settings ({origin}):\n  " + "\n  ".join(lines)


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> EdgeSettings:
    """Build the settings from a TOML file, the environment and CLI overrides (in rising precedence)."""
    file_values = read_toml(config) if config else {}
    merged = _deep_merge(_strip_env_over_toml(file_values, dict(os.environ)), overrides or {})
    origin = ", ".join(filter(None, [str(config) if config else "", "DEEPFER_* environment", "command line"]))
    try:
        return EdgeSettings(**merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
