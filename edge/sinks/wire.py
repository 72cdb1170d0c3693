"""How messages look on the wire: topic names, which topics are retained, and JSON payload bytes.

Shared by the envelope, the sinks and the Home Assistant discovery so that
every place spells topics, retains them and encodes payloads the same way.
"""

from __future__ import annotations

import json
from typing import Any

# Relative topics (under ``{prefix}/{device_id}/``).
EVENTS = "events"
STATE = "state"
STATS = "stats"
AVAILABILITY = "availability"
# Latest value wins: a subscriber that arrives later gets the current one from the broker.
RETAINED_TOPICS = frozenset({STATE, STATS})

ONLINE = "online"
OFFLINE = "offline"


def device_topic(prefix: str, device_id: str, topic: str) -> str:
    """``{prefix}/{device_id}/{topic}``; an empty prefix gives ``{device_id}/{topic}``."""
    return "/".join(part for part in (prefix.strip("/"), device_id, topic) if part)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays reach payloads from the pipeline; they know how to become Python values.
    for attr in ("tolist", "item"):
        fn = getattr(value, attr, None)
        if callable(fn):
            return fn()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json(payload: Any) -> str:
    """Compact JSON (one line, UTF-8 characters kept); numpy values are converted, unknown objects become strings."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def encode_payload(payload: dict[str, Any] | str | bytes) -> bytes:
    """Bytes for MQTT: dicts as compact JSON, strings as UTF-8 (plain, e.g. ``online``)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return to_json(payload).encode("utf-8")
