"""Settings through the command line: exit code 78 with one line, secrets never shown, --help without optional dependencies."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_toml as write

from edge.cli import main
from edge.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("clean_deepfer_env")


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


# --- topic names (issue 13, item 1) ---------------------------------------------------------


def test_a_wildcard_prefix_exits_78_before_connecting(capsys):
    assert main(["config", "--prefix", "#"]) == 78
    err = capsys.readouterr().err
    assert "mqtt.prefix" in err and "wildcard" in err


# --- no tracebacks for bad input (item 5) -------------------------------------------------------


def run_cli(*argv, env_extra=None, cwd=ROOT):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFER_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "edge.cli", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_malformed_json_section_in_the_environment_exits_78_with_one_line():
    r = run_cli("config", env_extra={"DEEPFER_MQTT": "{bad"})
    assert r.returncode == 78
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "DEEPFER_MQTT" in r.stderr and "JSON" in r.stderr


def test_a_json_section_in_the_environment_still_works():
    r = run_cli("config", env_extra={"DEEPFER_MQTT": '{"host": "from-json"}'})
    assert r.returncode == 0, r.stderr
    assert '"host": "from-json"' in r.stdout


def test_config_file_that_is_not_utf8_exits_78_with_one_line(tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('[mqtt]\nhost = "caf\u00e9"\n'.encode("latin-1"))
    r = run_cli("config", "--config", str(cfg))
    assert r.returncode == 78
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert str(cfg) in r.stderr and "UTF-8" in r.stderr and "line 2" in r.stderr


# --- secrets (item 6) ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [12345678, ["hunter2"], 3.25])
def test_a_mistyped_password_is_not_echoed(tmp_path, value, capsys):
    import json

    cfg = write(tmp_path, f"[mqtt]\npassword = {json.dumps(value)}\n")
    assert main(["config", "--config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert "mqtt.password" in err and "hidden" in err
    for shown in ("12345678", "hunter2", "3.25"):
        assert shown not in err


# --- contradictory settings (item 10) -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[mqtt]\nreconnect_min_s = 90\nreconnect_max_s = 30\n", "mqtt.reconnect_min_s (90) is larger than mqtt.reconnect_max_s (30)"),
        ("[mqtt]\nreconnect_min_s = 90\n", "mqtt.reconnect_min_s (90) is larger than mqtt.reconnect_max_s (60)"),
        (
            "[camera]\nreopen_backoff_s = 60\nreopen_backoff_max_s = 5\n",
            "camera.reopen_backoff_s (60) is larger than camera.reopen_backoff_max_s (5)",
        ),
        ('[mqtt]\ncert_file = "/etc/c.crt"\n', "mqtt.cert_file and mqtt.key_file go together"),
    ],
)
def test_contradictory_settings_are_refused(tmp_path, capsys, text, needle):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings(cfg)
    assert main(["config", "--config", str(cfg)]) == 78


# --- environment typos (item 12) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, nearest",
    [
        ("DEEPFER_MQTT_HOST", "DEEPFER_MQTT__HOST"),
        ("DEEPFER_DETECTR__KIND", "DEEPFER_DETECTOR__KIND"),
        ("DEEPFER_LOGLEVEL", "DEEPFER_LOG_LEVEL"),
        ("deepfer_mqtt__prot", "DEEPFER_MQTT__PORT"),
    ],
)
def test_an_unknown_deepfer_variable_names_the_nearest_setting(monkeypatch, capsys, name, nearest):
    monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert name in str(exc.value) and f"did you mean {nearest}" in str(exc.value)
    assert main(["config"]) == 78
    assert nearest in capsys.readouterr().err


