"""Settings tree: precedence TOML < environment < flags, clear errors, exit code 78, secrets."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main, overrides_from_args, build_parser
from edge.settings import ConfigError, EdgeSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("DEEPFER_"):
            monkeypatch.delenv(k)


def write(tmp_path, text):
    p = tmp_path / "edge.toml"
    p.write_text(text)
    return p


def test_defaults():
    s = load_settings()
    assert s.camera.source == "demo" and s.detector.kind == "yunet" and s.mqtt.enabled is False
    assert s.mqtt.prefix == "deepfer" and s.device_id


def test_precedence_toml_env_flags(tmp_path, monkeypatch):
    cfg = write(tmp_path, '[mqtt]\nhost = "from-file"\nport = 1000\nprefix = "file"\n[camera]\nsource = "a.mp4"\n')
    s = load_settings(cfg)
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.prefix, s.camera.source) == ("from-file", 1000, "file", "a.mp4")
    monkeypatch.setenv("DEEPFER_MQTT__HOST", "from-env")
    monkeypatch.setenv("DEEPFER_CAMERA__SOURCE", "b.mp4")
    s = load_settings(cfg)
    assert (s.mqtt.host, s.mqtt.port, s.camera.source) == ("from-env", 1000, "b.mp4")
    args = build_parser().parse_args(["--camera", "usb:0", "--mqtt-host", "from-flag", "--config", str(cfg)])
    s = load_settings(cfg, overrides_from_args(args))
    assert (s.mqtt.host, s.mqtt.enabled, s.mqtt.port, s.camera.source, s.mqtt.prefix) == ("from-flag", True, 1000, "usb:0", "file")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[mqtt]\nprot = 1\n", "mqtt.prot: unknown setting in section [mqtt]"),
        ("[mqtt]\nport = \"many\"\n", "mqtt.port"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[detector]\nkind = \"dlib\"\n", "detector.kind"),
        ("colour = 1\n", "colour: unknown setting"),
        ("device_id = \"a/b\"\n", "device_id"),
        ("[mqtt\n", "not valid TOML"),
    ],
)
def test_errors_name_the_field(tmp_path, text, needle):
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text))
    assert needle in str(exc.value)


def test_env_errors_are_config_errors(monkeypatch):
    monkeypatch.setenv("DEEPFER_TRACKER__MIN_DWELL_S", "zero")
    with pytest.raises(ConfigError, match="tracker.min_dwell_s"):
        load_settings()


def test_config_errors_exit_78(tmp_path, capsys):
    assert main(["--config", str(write(tmp_path, "[camera]\nsorce = 'x'\n"))]) == 78
    assert "camera.sorce" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 78
    assert "does not exist" in capsys.readouterr().err


def test_missing_model_exits_78(tmp_path, capsys):
    assert main(["--camera", "demo", "--model", str(tmp_path / "none.tflite"), "--max-frames", "1"]) == 78
    assert "none.tflite" in capsys.readouterr().err


def test_password_is_never_shown(tmp_path, capsys, caplog):
    cfg = write(tmp_path, '[mqtt]\nusername = "u"\npassword = "hunter2"\n')
    s = load_settings(cfg)
    assert s.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    with caplog.at_level(logging.DEBUG):
        assert main(["config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert '"username": "u"' in out and "hunter2" not in out and "hunter2" not in caplog.text


def test_reference_lists_every_field(capsys):
    assert main(["config", "--reference"]) == 0
    out = capsys.readouterr().out
    for name, f in EdgeSettings.model_fields.items():
        sub = getattr(f.annotation, "model_fields", None)
        for field in sub or [None]:
            assert (f"{name}.{field}" if field else name) in out


BLOCK_OPTIONAL = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'cv2', 'paho', 'ai_edge_litert', 'tflite_runtime', 'picamera2', 'tensorflow', 'keras', 'numpy'}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from edge.cli import main
sys.argv = ['deepfer-edge'] + sys.argv[1:]
sys.exit(main())
"""


@pytest.mark.parametrize("argv", [["--help"], ["config", "--reference"], ["check", "--help"]])
def test_help_needs_no_optional_dependency(argv):
    r = subprocess.run([sys.executable, "-c", BLOCK_OPTIONAL, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "deepfer-edge" in r.stdout or "camera.source" in r.stdout


def test_mqtt_password_from_systemd_credentials(tmp_path, monkeypatch, capsys):
    (tmp_path / "mqtt_password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert main(["config", "--mqtt-host", "b"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and '"password": "**********"' in out
    monkeypatch.setenv("DEEPFER_MQTT__PASSWORD", "from-env")  # an explicit setting wins over the credential
    from edge import cli

    seen = []

    def fake_run(settings, max_frames=0):
        seen.append(settings.mqtt.password.get_secret_value())
        return 0

    monkeypatch.setattr(cli, "run", fake_run)
    cli.main(["--mqtt-host", "b"])
    monkeypatch.delenv("DEEPFER_MQTT__PASSWORD")
    cli.main(["--mqtt-host", "b"])
    assert seen == ["from-env", "s3cret"]
