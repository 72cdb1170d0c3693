"""Event sinks: where the pipeline's messages go (MQTT broker, standard output).

Each sink takes messages through ``publish()`` without blocking the pipeline
thread and delivers them from a thread of its own. ``create_sinks`` builds the
enabled ones from the settings; ``SINKS`` maps a sink's name to its factory,
which imports the sink's module (and its dependencies) only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.protocols import EventSink, Registry

if TYPE_CHECKING:
    from edge.messages import Envelope
    from edge.settings import EdgeSettings

SINKS: Registry[EventSink] = Registry("sink")


@SINKS.register("stdout")
def _stdout_sink(settings: EdgeSettings, envelope: Envelope | None = None) -> EventSink:
    from edge.sinks.stdout_sink import StdoutSink

    return StdoutSink()


@SINKS.register("mqtt")
def _mqtt_sink(settings: EdgeSettings, envelope: Envelope | None = None, labels: tuple[str, ...] | None = None) -> EventSink:
    from edge.labels import EMOTIONS
    from edge.sinks.mqtt import MqttSink

    return MqttSink(settings.mqtt, settings.device_id, envelope, labels or EMOTIONS)


def create_sinks(
    settings: EdgeSettings, envelope: Envelope | None = None, labels: tuple[str, ...] | None = None
) -> list[EventSink]:
    """The sinks the settings enable (stdout first, then MQTT); none are started yet.

    ``envelope`` is the pipeline's stamping envelope; the MQTT sink checks that
    its sequence numbers persist when its queue does (build it with
    ``Envelope(device_id, state_file=edge.sinks.mqtt.sequence_file(settings.mqtt))``).
    """
    sinks: list[EventSink] = []
    if settings.stdout.enabled:
        sinks.append(SINKS.create("stdout", settings, envelope))
    if settings.mqtt.enabled:
        sinks.append(SINKS.create("mqtt", settings, envelope, labels))  # labels: the bundle's, for HA sensors
    return sinks
