"""edge.sinks.mqtt exports its names lazily, so that the daemon with MQTT off never loads paho."""

from __future__ import annotations

import pytest

import edge.sinks.mqtt as mqtt


def test_every_exported_name_resolves_from_the_module_that_defines_it():
    assert sorted(mqtt.__all__) == sorted(mqtt._WHERE)
    for name in mqtt.__all__:
        value = getattr(mqtt, name)
        assert value.__module__ == f"edge.sinks.mqtt.{mqtt._WHERE[name]}", name


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mqtt.nope  # type: ignore[attr-defined]
