"""Message envelope: schema version, timestamp, device id and a per-topic sequence number.

Every JSON payload the daemon sends carries ``v``, ``ts`` (ISO 8601 UTC),
``device_id`` and ``seq``; ``seq`` rises by one per message on each topic so a
subscriber can tell whether anything was lost. The sequence counters can be
kept in a small JSON file so they continue across daemon restarts (needed when
undelivered events are persisted too).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.protocols import Message
from edge.sinks.wire import RETAINED_TOPICS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Envelope:
    """Stamps payloads; thread-safe. ``state_file`` (optional) keeps ``seq`` across restarts."""

    def __init__(self, device_id: str, state_file: Path | None = None) -> None:
        self.device_id = device_id
        self._state_file = state_file
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        if state_file is not None and state_file.exists():
            try:
                self._seq = {str(k): int(v) for k, v in json.loads(state_file.read_text()).items()}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("sequence file %s unreadable (%s); sequences restart at 1, or after the highest "
                            "seq of the events still queued for the broker", state_file, exc)

    @property
    def state_file(self) -> Path | None:
        """Where the sequence counters persist (None: they restart at 1 with the daemon)."""
        return self._state_file

    def next_seq(self, topic: str) -> int:
        with self._lock:
            seq = self._seq.get(topic, 0) + 1
            self._seq[topic] = seq
            if self._state_file is not None:
                self._save()
            return seq

    def continue_after(self, topic: str, seq: int) -> None:
        """Make ``topic``'s next ``seq`` larger than ``seq`` (no change when it already is).

        Events still queued on disk carry numbers the subscribers have not seen
        yet; when the sequence file is lost, new events must not reuse them, or
        a subscriber de-duplicating on ``seq`` would drop real events.
        """
        with self._lock:
            if seq > self._seq.get(topic, 0):
                self._seq[topic] = seq
                if self._state_file is not None:
                    self._save()

    def _save(self) -> None:
        assert self._state_file is not None
        tmp = self._state_file.with_suffix(".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._seq))
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.warning("cannot save sequence numbers to %s: %s", self._state_file, exc)

    def message(self, topic: str, body: dict[str, Any], qos: int = 1) -> Message:
        payload = {"v": SCHEMA_VERSION, "ts": utc_now_iso(), "device_id": self.device_id, "seq": self.next_seq(topic)}
        payload.update(body)
        return Message(topic=topic, payload=payload, retain=topic in RETAINED_TOPICS, qos=qos)
