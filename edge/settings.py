"""The daemon's one settings tree.

Precedence, lowest to highest: defaults < TOML file (``--config``) <
``DEEPFER_*`` environment variables (nested with ``__``, e.g.
``DEEPFER_MQTT__HOST``) < command-line flags. Each component receives only its
own section; nothing outside this module reads the environment or a credential
(``mqtt.password_file``, systemd's ``LoadCredential=``).
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import tomllib
import typing
import unicodedata
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "DEEPFER_"
# DEEPFER_* variables that are not settings: deploy/install.sh reads these.
NON_SETTING_ENV = frozenset({"DEEPFER_PREFIX", "DEEPFER_DRY_RUN", "DEEPFER_PYTHON"})
MAX_TOPIC_BYTES = 65535  # MQTT: a topic name is a UTF-8 string with a 16-bit length
# Room kept for what follows the configured parts of a topic ("/availability", "/sensor/…/share_<label>/config").
TOPIC_SUFFIX_RESERVE = 256


def topic_part_problem(value: str, *, allow_slash: bool) -> str | None:
    """Why ``value`` cannot be part of an MQTT topic name, or None when it can.

    Wildcards (# +) are only legal in subscriptions: a topic holding one is
    refused by the broker on every publish, which looks like a connection
    problem. NUL is forbidden by MQTT and other control characters are
    discouraged; a name longer than 65,535 bytes cannot be encoded at all.
    """
    bad = [c for c in "#+" if c in value]
    if not allow_slash and "/" in value:
        bad.append("/")
    if bad:
        return f"must not hold {' or '.join(repr(c) for c in bad)} (MQTT wildcards and level separators cannot be part of a topic name)"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "must not hold control characters (NUL, tab, newline, …)"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid UTF-8 text"
    if size > MAX_TOPIC_BYTES - TOPIC_SUFFIX_RESERVE:
        return f"is {size} bytes long; MQTT topics are at most {MAX_TOPIC_BYTES} bytes, so keep it under {MAX_TOPIC_BYTES - TOPIC_SUFFIX_RESERVE}"
    return None


def _longer_first(field_a: str, a: float, field_b: str, b: float) -> None:
    if a > b:
        raise ValueError(f"{field_a} ({a:g}) is larger than {field_b} ({b:g}); the first delay cannot exceed the longest one")


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

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraSettings:
        _longer_first("camera.reopen_backoff_s", self.reopen_backoff_s, "camera.reopen_backoff_max_s", self.reopen_backoff_max_s)
        return self


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

    @field_validator("prefix", "discovery_prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        if problem := topic_part_problem(v, allow_slash=True):
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        _longer_first("mqtt.reconnect_min_s", self.reconnect_min_s, "mqtt.reconnect_max_s", self.reconnect_max_s)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.cert_file and mqtt.key_file go together for client certificates; set both or neither")
        return self

    def login_password(self) -> str | None:
        """The password to log in with: the first line of ``password_file``, else ``password``.

        The file is read here, when the client is built, not when the settings
        are: a daemon with MQTT off never touches it. Raises ConfigError naming
        the setting.
        """
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file {self.password_file} cannot be read ({exc.strerror}); fix the path or its permissions"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(f"mqtt.password_file {self.password_file} is not UTF-8 text; save the password as UTF-8") from None
            lines = text.splitlines()
            return lines[0] if lines else ""
        if self.password is not None:
            return self.password.get_secret_value()
        return None


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
        if not v or " " in v:
            raise ValueError("must be non-empty and hold no spaces (it is part of MQTT topics)")
        if problem := topic_part_problem(v, allow_slash=False):
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _topics_fit(self) -> EdgeSettings:
        # Each part fits on its own; together, with what follows them, they must still fit one topic.
        room = MAX_TOPIC_BYTES - TOPIC_SUFFIX_RESERVE
        id_bytes = len(self.device_id.encode("utf-8"))
        for field, prefix in (("mqtt.prefix", self.mqtt.prefix), ("mqtt.discovery_prefix", self.mqtt.discovery_prefix)):
            if len(prefix.encode("utf-8")) + id_bytes > room:
                raise ValueError(
                    f"{field} and device_id together make topics longer than MQTT's {MAX_TOPIC_BYTES} bytes; shorten one of them"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: command-line flags (init), then DEEPFER_* variables, then the --config file.
        return (init_settings, env_settings, _ConfigFile(settings_cls, toml_file=_config_file.get()))


class ConfigError(Exception):
    """A settings problem a person must fix; the daemon exits with EX_CONFIG (78)."""


EX_CONFIG = 78


def read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it (see deploy/edge.example.toml) or drop --config") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")  # TOML files are UTF-8 by definition, whatever the locale says
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8 {path.name}`)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _sections() -> dict[str, type[BaseModel]]:
    """Root field name -> its section model, for the fields that are sections."""
    out = {}
    for name, f in EdgeSettings.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out[name] = f.annotation
    return out


def env_names() -> dict[str, str]:
    """Every environment variable that sets something (upper case) -> the setting path it sets."""
    names = {f"{ENV_PREFIX}{name}".upper(): name for name in EdgeSettings.model_fields}
    for section, model in _sections().items():
        for sub in model.model_fields:
            names[f"{ENV_PREFIX}{section}__{sub}".upper()] = f"{section}.{sub}"
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``DEEPFER_*`` variables that set nothing (a typo would otherwise be silently ignored).

    Also refuses a section given as malformed JSON (``DEEPFER_MQTT='{bad'``),
    naming the variable rather than the parser's internals.
    """
    known = env_names()
    sections = {f"{ENV_PREFIX}{s}".upper() for s in _sections()}
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_SETTING_ENV:
            continue
        if upper not in known:
            near = difflib.get_close_matches(upper, list(known), n=1, cutoff=0.6)
            hint = (
                f"did you mean {near[0]} ({known[near[0]]})?" if near
                else "deepfer-edge config --reference lists the settings"
            )
            raise ConfigError(
                f"environment variable {key} is not a setting; {hint} "
                f"(sections nest with two underscores: {ENV_PREFIX}SECTION__NAME)"
            )
        if upper in sections:
            try:
                value = json.loads(environ[key])
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"environment variable {key} is not valid JSON ({exc.msg} at character {exc.pos}); "
                    f"set the whole section as a JSON object, e.g. {key}='{{\"name\": value}}', "
                    f"or one setting at a time, e.g. {key}__NAME=value"
                ) from None
            if not isinstance(value, dict):
                raise ConfigError(f"environment variable {key} must be a JSON object of [{known[upper]}] settings, e.g. '{{\"name\": value}}'")


# The --config file of the load_settings call under way (settings_customise_sources takes no arguments).
_config_file: ContextVar[Path | None] = ContextVar("deepfer_config_file", default=None)


class _ConfigFile(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, reading through read_toml: a missing or broken file is one line, not skipped."""

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        return read_toml(Path(str(files))) if files is not None else {}


def _holds_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_holds_secret(a) for a in typing.get_args(annotation))


def secret_paths() -> frozenset[tuple[str, ...]]:
    """Setting paths whose values are secrets (SecretStr): never shown, not even when mistyped."""
    paths: set[tuple[str, ...]] = {(name,) for name, f in EdgeSettings.model_fields.items() if _holds_secret(f.annotation)}
    for section, model in _sections().items():
        paths |= {(section, sub) for sub, f in model.model_fields.items() if _holds_secret(f.annotation)}
    return frozenset(paths)


_SHOWN_CHARS = 80


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    secrets = secret_paths()
    for err in exc.errors():
        path = tuple(str(p) for p in err["loc"])
        loc = ".".join(path) or "(root)"
        if err["type"] == "extra_forbidden":
            section = ".".join(path[:-1])
            where = f"section [{section}]" if section else "the top level"
            lines.append(f"{loc}: unknown setting in {where}; check its spelling (deepfer-edge config --reference lists them)")
            continue
        got = err.get("input")
        if path[:2] in secrets:
            shown = " (value hidden: it is a secret)"
        elif isinstance(got, (dict, list)):
            shown = ""
        else:
            text = repr(got)
            # A 70,000-character value would bury the one line that matters.
            shown = f" (got {text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + '…'})"
        # A cross-field rule names its fields itself; pydantic's "Value error, " prefix adds nothing.
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{msg}{shown}" if not path or msg.startswith(f"{loc}.") else f"{loc}: {msg}{shown}")
    return f"invalid settings ({origin}):\n  " + "\n  ".join(lines)


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> EdgeSettings:
    """Build the settings from a TOML file, the environment and CLI overrides (in rising precedence).

    With no MQTT password set anywhere, systemd's ``mqtt_password`` credential
    (``LoadCredential=``) supplies it: the unit hands it over as a file, never
    on a command line.
    """
    check_environment(os.environ)
    origin = ", ".join(filter(None, [str(config) if config else "", "DEEPFER_* environment", "command line"]))
    token = _config_file.set(config)
    try:
        settings = EdgeSettings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
    except SettingsError as exc:  # a DEEPFER_* value pydantic-settings cannot parse at all
        raise ConfigError(f"invalid settings ({origin}): {exc}") from None
    finally:
        _config_file.reset(token)
    if settings.mqtt.password is None and settings.mqtt.password_file is None:
        secret = read_credential("mqtt_password", os.environ)
        if secret:
            settings.mqtt.password = SecretStr(secret)
    return settings


def read_credential(name: str, environ: Mapping[str, str]) -> str | None:
    """Read a systemd credential (``LoadCredential=NAME:…``) from ``$CREDENTIALS_DIRECTORY``.

    Returns the content without its trailing newline, or None when there is no
    credentials directory, no such credential, or it is empty (the unit always
    loads ``mqtt_password``; install.sh creates it empty when there is none).
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid credential name {name!r}")
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError(f"credential {path} is not UTF-8 text; rewrite its source file (e.g. /etc/deepfer/{name})") from None
    except OSError as exc:
        raise ConfigError(f"credential {path} cannot be read: {exc.strerror}; check LoadCredential= in the unit") from None
    text = text.removesuffix("\n").removesuffix("\r")
    return text or None


# What systemd sets for a Type=notify service (sd_notify(3)); edge.notify speaks the protocol.
SERVICE_MANAGER_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def service_manager_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the service manager set for this process (none outside systemd)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in SERVICE_MANAGER_ENV if k in env}
