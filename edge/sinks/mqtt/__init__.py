"""The MQTT sink, one module per job (the sink itself is :mod:`edge.sinks.mqtt.sink`).

- ``client``: the paho client built from the settings, ``check_broker`` and the
  sentences that say why a connection failed (also used by ``check`` and ``watch``);
- ``outbox``: the delivery queue and its rules, pure (no paho, threads or I/O);
- ``journal``: the on-disk queue (``mqtt.persist``) and the sequence file's place;
- ``discovery``: Home Assistant discovery, pure functions the sink calls;
- ``sink``: ``MqttSink``, its sender thread and the paho callbacks, composing the above.

The dependencies point one way: ``sink`` uses the others; none of them imports ``sink``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.sinks.mqtt.client import check_broker, make_client
    from edge.sinks.mqtt.journal import EventJournal, StoredEvent, journal_file, sequence_file
    from edge.sinks.mqtt.sink import MqttSink

# Names load on first use: the daemon asks for ``sequence_file`` even with MQTT off, and that
# must not import paho for a sink that never runs.
_WHERE = {
    "check_broker": "client", "make_client": "client",
    "EventJournal": "journal", "StoredEvent": "journal", "journal_file": "journal", "sequence_file": "journal",
    "MqttSink": "sink",
}

__all__ = [
    "EventJournal", "MqttSink", "StoredEvent", "check_broker", "journal_file", "make_client", "sequence_file",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
