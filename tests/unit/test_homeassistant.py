"""Home Assistant discovery configs: topics, shared device block, availability, value templates."""

from __future__ import annotations

import json

import pytest

from edge.labels import EMOTIONS
from edge.settings import MqttSettings
from edge.sinks.mqtt import discovery


def configs(**settings: object) -> dict[str, dict]:
    return discovery.discovery_configs(MqttSettings(**settings), "pi-1", sw_version="9.9")


def test_one_sensor_per_quantity_under_the_discovery_prefix() -> None:
    got = configs()
    expected_ids = ["dominant_emotion", "faces", *(f"share_{e}" for e in EMOTIONS), "fps_processed"]
    assert list(got) == [f"homeassistant/sensor/pi-1/{oid}/config" for oid in expected_ids]
    assert len({c["unique_id"] for c in got.values()}) == len(got)
    assert discovery.removal_topics(MqttSettings(), "pi-1") == list(got)


def test_all_sensors_share_the_device_and_the_availability_topic() -> None:
    got = configs(prefix="home/fer", discovery_prefix="ha")
    assert all(topic.startswith("ha/sensor/pi-1/") for topic in got)
    devices = {json.dumps(c["device"], sort_keys=True) for c in got.values()}
    assert len(devices) == 1
    device = next(iter(got.values()))["device"]
    assert device["identifiers"] == ["deepfer_pi-1"] and device["sw_version"] == "9.9" and device["name"] == "DeepFER pi-1"
    assert {c["availability_topic"] for c in got.values()} == {"home/fer/pi-1/availability"}
    assert {(c["payload_available"], c["payload_not_available"]) for c in got.values()} == {("online", "offline")}
    assert discovery.status_topic("ha") == "ha/status"


def test_sensors_read_the_right_topic_and_field() -> None:
    got = {topic.split("/")[3]: c for topic, c in configs().items()}
    assert got["dominant_emotion"]["state_topic"] == "deepfer/pi-1/state"
    assert "value_json.dominant" in got["dominant_emotion"]["value_template"]
    assert "value_json.faces" in got["faces"]["value_template"]
    for label in EMOTIONS:
        share = got[f"share_{label}"]
        assert share["state_topic"] == "deepfer/pi-1/state" and share["unit_of_measurement"] == "%"
        assert f"'{label}'" in share["value_template"] and "shares" in share["value_template"]
    assert got["fps_processed"]["state_topic"] == "deepfer/pi-1/stats"
    assert "value_json.fps.processed" in got["fps_processed"]["value_template"]
    assert got["fps_processed"]["entity_category"] == "diagnostic"


def test_value_templates_render_the_payloads() -> None:
    # Home Assistant renders these with Jinja2; plain Jinja2 has the same float/int/round filters.
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 not installed; it renders HA's value templates")
    env = jinja2.Environment()
    got = {topic.split("/")[3]: c for topic, c in configs().items()}
    state = {"faces": 2, "dominant": "happy", "shares": {"happy": 0.8123, "sad": 0.1877}, "mean_scores": {}, "frames": 10, "window_s": 5.0}
    idle = {"faces": 0, "dominant": None, "shares": {}, "mean_scores": {}, "frames": 0, "window_s": 5.0}
    stats = {"fps": {"in": 15.0, "processed": 14.26, "dropped": 0.7}}

    def render(object_id: str, value_json: dict) -> str:
        return env.from_string(got[object_id]["value_template"]).render(value_json=value_json).strip()

    assert render("dominant_emotion", state) == "happy"
    assert render("dominant_emotion", idle) == "none"
    assert render("faces", state) == "2"
    assert render("share_happy", state) == "81.2"
    assert render("share_angry", state) == "0.0"
    assert render("share_happy", idle) == "0.0"
    assert render("fps_processed", stats) == "14.3"
