"""Home Assistant MQTT discovery: the retained sensor configs that make the device appear in HA.

With ``mqtt.homeassistant = true`` the MQTT sink publishes, retained, one
config per sensor under
``{discovery_prefix}/sensor/{device_id}/{object_id}/config``:

- ``dominant_emotion``: the dominant emotion over the state window (``none`` without faces)
- ``faces``: faces in view
- ``share_<label>``: per emotion, its share of face-frames over the window, in %
- ``fps_processed``: frames processed per second (diagnostic)

All share one ``device`` block (identifiers ``deepfer_<device_id>``) and use
the sink's availability topic, so HA greys them out when the daemon is gone.
The sink re-sends them when HA announces itself on ``{discovery_prefix}/status``
(:class:`StatusListener` decides what counts as that). With the option off, the
sink publishes empty retained payloads to the same topics once per run, which removes
entities left over from an earlier run (:func:`discovery_messages` gives either).

Pure functions and one small class the sink calls; nothing here imports the sink.

The value templates read the ``state`` and ``stats`` payloads specified in docs/mqtt.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from edge import __version__
from edge.labels import EMOTIONS
from edge.settings import MqttSettings
from edge.sinks.wire import AVAILABILITY, OFFLINE, ONLINE, STATE, STATS, device_topic, encode_payload

log = logging.getLogger(__name__)

MODEL = "DeepFER edge"
MANUFACTURER = "DeepFER"
# Home Assistant's birth message is "online"; anything much longer is not one, and is not even copied.
HA_STATUS_MAX_BYTES = 64
_HA_LOG_INTERVAL_S = 60.0


def software_version() -> str:
    return __version__


def object_ids(labels: Sequence[str] = EMOTIONS) -> list[str]:
    """Every object id this module announces, in announcement order."""
    return ["dominant_emotion", "faces", *(f"share_{label}" for label in labels), "fps_processed"]


def discovery_topic(discovery_prefix: str, device_id: str, object_id: str) -> str:
    return f"{discovery_prefix.strip('/')}/sensor/{device_id}/{object_id}/config"


def status_topic(discovery_prefix: str) -> str:
    """Where HA publishes ``online`` when it (re)starts; configs are re-sent then."""
    return f"{discovery_prefix.strip('/')}/status"


def device_block(device_id: str, sw_version: str | None = None) -> dict[str, Any]:
    return {
        "identifiers": [f"deepfer_{device_id}"],
        "name": f"DeepFER {device_id}",
        "model": MODEL,
        "manufacturer": MANUFACTURER,
        "sw_version": sw_version or software_version(),
    }


def discovery_configs(
    settings: MqttSettings,
    device_id: str,
    labels: Sequence[str] = EMOTIONS,
    sw_version: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Discovery topic → config payload for every sensor, in announcement order."""
    state = device_topic(settings.prefix, device_id, STATE)
    stats = device_topic(settings.prefix, device_id, STATS)
    common: dict[str, Any] = {
        "availability_topic": device_topic(settings.prefix, device_id, AVAILABILITY),
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device_block(device_id, sw_version),
        "origin": {"name": "deepfer-edge", "sw_version": sw_version or software_version()},
    }

    def sensor(object_id: str, name: str, topic: str, template: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        config = {
            "name": name,
            "unique_id": f"deepfer_{device_id}_{object_id}",
            "state_topic": topic,
            "value_template": template,
            **extra,
            **common,
        }
        return discovery_topic(settings.discovery_prefix, device_id, object_id), config

    entries = [
        sensor(
            "dominant_emotion",
            "Dominant emotion",
            state,
            # null without faces: show "none" rather than HA's "unknown", which reads like a fault.
            "{{ value_json.dominant if value_json.dominant else 'none' }}",
            icon="mdi:emoticon-outline",
        ),
        sensor("faces", "Faces in view", state, "{{ value_json.faces | int(0) }}", icon="mdi:account-multiple", state_class="measurement"),
    ]
    for label in labels:
        entries.append(
            sensor(
                f"share_{label}",
                f"Share {label}",
                state,
                # shares are fractions 0..1 of face-frames; HA users expect percent.
                f"{{{{ ((value_json.shares.get('{label}', 0) | float(0)) * 100) | round(1) }}}}",
                unit_of_measurement="%",
                state_class="measurement",
                icon="mdi:chart-donut",
            )
        )
    entries.append(
        sensor(
            "fps_processed",
            "Processed fps",
            stats,
            "{{ value_json.fps.processed | float(0) | round(1) }}",
            unit_of_measurement="fps",
            state_class="measurement",
            entity_category="diagnostic",
            icon="mdi:speedometer",
        )
    )
    return dict(entries)


def removal_topics(settings: MqttSettings, device_id: str, labels: Sequence[str] = EMOTIONS) -> list[str]:
    """Discovery topics to clear (empty retained payload) when discovery is off."""
    return [discovery_topic(settings.discovery_prefix, device_id, oid) for oid in object_ids(labels)]


def discovery_messages(settings: MqttSettings, device_id: str, labels: Sequence[str] = EMOTIONS) -> dict[str, bytes]:
    """Discovery topic → retained payload: the configs with discovery on; with it off, empty payloads (removals)."""
    if settings.homeassistant:
        return {topic: encode_payload(config) for topic, config in discovery_configs(settings, device_id, labels).items()}
    return {topic: b"" for topic in removal_topics(settings, device_id, labels)}


class StatusListener:
    """Reads what arrives on Home Assistant's status topic: is it HA's birth message (configs due again)?

    Anyone allowed to publish there can send anything, as often as they like:
    neither the payload's size nor its rate may reach memory or the log
    unbounded, so oversized payloads are ignored unread and both log lines are
    rate-limited (the rest go to debug).
    """

    def __init__(self) -> None:
        self._logged_at: float | None = None
        self._ignored = 0
        self._ignored_logged_at: float | None = None

    def is_birth(self, topic: str, payload: bytes | bytearray, now: float) -> bool:
        """Whether ``payload`` on ``topic`` (received at monotonic time ``now``) says HA came online."""
        if len(payload) > HA_STATUS_MAX_BYTES:
            self._ignored += 1
            if self._ignored_logged_at is None or now - self._ignored_logged_at >= _HA_LOG_INTERVAL_S:
                log.warning(
                    "MQTT: ignored a %d-byte message on %s (Home Assistant sends 'online'; %d ignored so far)",
                    len(payload), topic, self._ignored,
                )
                self._ignored_logged_at = now
            return False
        if payload.strip().lower() != ONLINE.encode():
            return False
        if self._logged_at is None or now - self._logged_at >= _HA_LOG_INTERVAL_S:
            log.info("MQTT: Home Assistant came online; announcing the device again")
            self._logged_at = now
        else:
            log.debug("MQTT: Home Assistant came online again; announcing the device again")
        return True
