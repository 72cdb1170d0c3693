"""Settings: precedence TOML < environment < flags, errors that name the setting, cross-field rules (no processes)."""

import re
from pathlib import Path

import pytest
from conftest import write_toml as write

from edge.cli import build_parser, overrides_from_args
from edge.settings import ConfigError, MqttSettings, load_settings, read_credential, service_manager_environment

pytestmark = pytest.mark.usefixtures("clean_deepfer_env")


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


def test_a_json_section_in_the_environment_merges_with_the_file_section(tmp_path, monkeypatch):
    cfg = write(tmp_path, '[mqtt]\nhost = "from-file"\nport = 1000\n')
    monkeypatch.setenv("DEEPFER_MQTT", '{"host": "from-json"}')
    s = load_settings(cfg)
    assert (s.mqtt.host, s.mqtt.port) == ("from-json", 1000)


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
    with pytest.raises(ConfigError, match=re.escape("tracker.min_dwell_s")):
        load_settings()


# --- topic names (issue 13, item 1) ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"mqtt": {"prefix": "#"}}, "mqtt.prefix"),
        ({"mqtt": {"prefix": "home/+/x"}}, "mqtt.prefix"),
        ({"mqtt": {"prefix": "a\x00b"}}, "mqtt.prefix"),
        ({"mqtt": {"discovery_prefix": "ha#"}}, "mqtt.discovery_prefix"),
        ({"mqtt": {"discovery_prefix": "ha\nx"}}, "mqtt.discovery_prefix"),
        ({"device_id": "kitchen\x07"}, "device_id"),
        ({"device_id": "a+b"}, "device_id"),
        ({"device_id": "x" * 70_000}, "device_id"),
        ({"mqtt": {"prefix": "p" * 70_000}}, "mqtt.prefix"),
        # Each part fits on its own, but not the topics made of both.
        ({"device_id": "d" * 40_000, "mqtt": {"prefix": "p" * 40_000}}, "mqtt.prefix and device_id"),
    ],
)
def test_topic_parts_that_mqtt_cannot_carry_are_refused(overrides, field):
    with pytest.raises(ConfigError) as exc:
        load_settings(overrides=overrides)
    message = str(exc.value)
    assert field in message
    assert len(message) < 400  # a 70,000-character value is not echoed in full


def test_topic_parts_mqtt_allows_are_kept():
    s = load_settings(overrides={"device_id": "küche-1", "mqtt": {"prefix": "home/deepfer", "discovery_prefix": "ha"}})
    assert (s.device_id, s.mqtt.prefix, s.mqtt.discovery_prefix) == ("küche-1", "home/deepfer", "ha")
    assert load_settings(overrides={"mqtt": {"prefix": ""}}).mqtt.prefix == ""


# --- secrets (item 6) ---------------------------------------------------------------------------


def test_other_mistyped_values_are_still_shown(tmp_path):
    with pytest.raises(ConfigError, match="got 'many'"):
        load_settings(write(tmp_path, '[mqtt]\nport = "many"\n'))


# --- contradictory settings (item 10) -----------------------------------------------------------


def test_equal_first_and_longest_delays_are_fine():
    s = load_settings(overrides={"mqtt": {"reconnect_min_s": 5, "reconnect_max_s": 5}})
    assert s.mqtt.reconnect_min_s == s.mqtt.reconnect_max_s == 5


# --- environment typos (item 12) ----------------------------------------------------------------


def test_an_unknown_deepfer_variable_far_from_any_setting_points_to_the_reference(monkeypatch):
    monkeypatch.setenv("DEEPFER_ZZZZZZZZZZZZ", "1")
    with pytest.raises(ConfigError, match="DEEPFER_ZZZZZZZZZZZZ is not a setting; deepfer-edge config --reference"):
        load_settings()


def test_the_install_scripts_variables_and_real_settings_are_accepted(monkeypatch):
    # deploy/install.sh reads these; a shell that ran it may still export them.
    for name in ("DEEPFER_PREFIX", "DEEPFER_DRY_RUN", "DEEPFER_PYTHON"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("DEEPFER_MQTT__HOST", "b")
    monkeypatch.setenv("deepfer_log_level", "DEBUG")  # names are case-insensitive, as pydantic-settings reads them
    s = load_settings()
    assert (s.mqtt.host, s.log_level) == ("b", "DEBUG")


def test_read_credential(tmp_path: Path) -> None:
    (tmp_path / "mqtt_password").write_text("s3cret with spaces \n")
    (tmp_path / "crlf").write_text("line\r\n", newline="")
    (tmp_path / "empty").write_text("")
    (tmp_path / "two_lines").write_text("a\nb\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_credential("mqtt_password", env) == "s3cret with spaces "
    assert read_credential("crlf", env) == "line"
    assert read_credential("two_lines", env) == "a\nb"
    assert read_credential("empty", env) is None  # install.sh's placeholder means "no password"
    assert read_credential("missing", env) is None
    assert read_credential("mqtt_password", {}) is None


def test_read_credential_rejects_paths(tmp_path: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    for bad in ("", "../etc/passwd", "a/b", ".."):
        with pytest.raises(ValueError):
            read_credential(bad, env)


def test_unreadable_credential_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "adir").mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(ConfigError, match="binary"):
        read_credential("binary", env)
    with pytest.raises(ConfigError, match="adir"):
        read_credential("adir", env)


def test_the_mqtt_password_comes_from_the_file_then_the_setting_then_the_systemd_credential(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd\n")
    (tmp_path / "pw").write_text("from-file\nsecond line is ignored\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_settings().mqtt.login_password() == "from-systemd"
    monkeypatch.setenv("DEEPFER_MQTT__PASSWORD", "from-setting")
    assert load_settings().mqtt.login_password() == "from-setting"
    monkeypatch.setenv("DEEPFER_MQTT__PASSWORD_FILE", str(tmp_path / "pw"))
    assert load_settings().mqtt.login_password() == "from-file"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.delenv("DEEPFER_MQTT__PASSWORD")
    monkeypatch.delenv("DEEPFER_MQTT__PASSWORD_FILE")
    assert load_settings().mqtt.login_password() is None


def test_an_unreadable_password_file_names_the_setting_when_the_client_asks(tmp_path):
    missing = MqttSettings(password_file=tmp_path / "nope")  # settings alone never open it
    with pytest.raises(ConfigError, match=r"^mqtt\.password_file .*nope cannot be read"):
        missing.login_password()
    (tmp_path / "latin1").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^mqtt\.password_file .*latin1 is not UTF-8 text"):
        MqttSettings(password_file=tmp_path / "latin1").login_password()
    (tmp_path / "empty").write_text("")
    assert MqttSettings(password_file=tmp_path / "empty").login_password() == ""


def test_only_the_service_managers_variables_reach_the_notifier():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "HOME": "/root", "DEEPFER_MQTT__HOST": "b"}
    assert service_manager_environment(env) == {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert service_manager_environment({}) == {}
