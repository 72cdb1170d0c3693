"""Event sinks: where the pipeline's messages go (MQTT broker, standard output).

Each sink takes messages through ``publish()`` without blocking the pipeline
thread and delivers them from a thread of its own. ``create_sinks`` builds the
enabled ones from the settings, importing each sink's module (and its
dependencies) only when it is enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.protocols import EventSink

if TYPE_CHECKING:
    from edge.messages import Envelope
    from edge.settings import EdgeSettings


def create_sinks(
    settings: EdgeSettings, envelope: Envelope | None = None, labels: tuple[str, ...] | None = None
) -> list[EventSink]:
    """The sinks the settings enable (stdout first, then MQTT); none are started yet.

    ``envelope`` is the pipeline's stamping envelope; the MQTT sink checks that
    its sequence numbers persist when its queue does (build it with
    ``Envelope(device_id, state_file=edge.sinks.mqtt.sequence_file(settings.mqtt))``).
    ``labels`` are the bundle's, for the Home Assistant sensors.
    """
    sinks: list[EventSink] = []
    if settings.stdout.enabled:
        from edge.sinks.stdout_sink import StdoutSink

        sinks.append(StdoutSink())
    if settings.mqtt.enabled:
        from edge.labels import EMOTIONS
        from edge.sinks.mqtt import MqttSink

        sinks.append(MqttSink(settings.mqtt, settings.device_id, envelope, labels or EMOTIONS))
    return sinks
