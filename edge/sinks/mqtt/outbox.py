"""The MQTT sink's delivery queue: what is still to send, what paho holds, and what the journal must learn.

Pure bookkeeping: no paho, no threads, no I/O. The sink calls every method
with its own lock held and does the sending and the disk writes; this class
decides what goes out next, what counts as delivered or dropped, and what is
sent again after a reconnect. The rules:

- Events (and every other message that is not latest-value, see
  :func:`latest_value_only`) are kept in publish order under a rising key
  until the broker acknowledged them. At most ``window`` of them are handed to
  paho and unacknowledged at once, which bounds paho's own queue.
- ``queue_size`` bounds pending plus in-flight events; beyond it the OLDEST
  (lowest key) is dropped and counted, even one already with paho (which may
  still deliver it, harmlessly).
- After a reconnect the in-flight events go back to the front of the queue, in
  key order: delivery is at-least-once and never reordered.
- Latest-value topics (``state``, ``stats``, any retained message) keep only
  their newest payload, with a version; a topic is due while the version sent
  differs from the newest one.
- With a journal attached, every new event is listed for storing and every
  acknowledged or dropped key for forgetting, and an event is not sent before
  it was stored (a crash after the send must not lose it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from edge.sinks.wire import EVENTS, RETAINED_TOPICS

SEND_WINDOW = 20  # events handed to paho and not yet acknowledged
# Acks whose message id was never registered (its message was dropped on overflow) would pile
# up in the early-ack set; past this many it is cleared.
_EARLY_ACKS_MAX = 10 * SEND_WINDOW


def latest_value_only(topic: str, retain: bool) -> bool:
    """Whether only the newest message on ``topic`` matters (retained state), rather than every one (events)."""
    return topic != EVENTS and (retain or topic in RETAINED_TOPICS)


@dataclass
class QueuedEvent:
    key: int  # rises with each event: the delivery order, and the journal's key
    topic: str  # relative, e.g. "events"
    payload: bytes
    qos: int
    stored: bool = False  # in the journal (or its write failed and it goes out from memory)


class Outbox:
    """Pending events, the messages with paho (message id -> event, None for retained ones), latest values."""

    def __init__(self, queue_size: int, window: int = SEND_WINDOW) -> None:
        self.queue_size = queue_size
        self.window = max(1, min(window, queue_size))
        self.epoch = 0  # bumped on each connect; a hand-over that straddles one is sent again
        self._pending: deque[QueuedEvent] = deque()  # not handed to paho yet, oldest first
        self._inflight: dict[int, QueuedEvent | None] = {}  # paho mid -> the event it carries (None: not an event)
        self._early_acks: set[int] = set()  # acks that beat the registration of their mid
        self._latest: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, version)
        self._latest_sent: dict[str, int] = {}  # topic -> version handed to paho
        self._next_key = 1
        self._journaled = False
        self._unstored: list[QueuedEvent] = []  # to write to the journal
        self._to_forget: list[int] = []  # keys to delete from the journal (acknowledged or dropped)
        self._delivered = 0
        self._dropped = 0

    # -- counters --------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Events not acknowledged yet: pending plus with paho."""
        return len(self._pending) + self._flight_events()

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def dropped(self) -> int:
        return self._dropped

    def undelivered(self) -> bool:
        """Events unacknowledged, or a latest value not handed over yet."""
        return bool(self.queued) or bool(self.latest_due())

    # -- what the pipeline publishes -------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if latest_value_only(topic, retain):
            _, version = self._latest.get(topic, (b"", 0))
            self._latest[topic] = (payload, version + 1)
            return
        event = QueuedEvent(self._next_key, topic, payload, qos)
        self._next_key += 1
        self._pending.append(event)
        if self._journaled:
            self._unstored.append(event)
        self._enforce_bound()

    # -- what the sender hands to paho -----------------------------------------------------------

    def sendable(self) -> bool:
        """Whether a latest value is due or the window has room for a pending event."""
        return bool(self.latest_due()) or (bool(self._pending) and self._flight_events() < self.window)

    def next_event(self) -> QueuedEvent | None:
        """Take the oldest pending event to hand over, or None: none pending, window full, or not stored yet."""
        if not self._pending or self._flight_events() >= self.window:
            return None
        if self._journaled and not self._pending[0].stored:
            return None  # store first, so that a crash after the send cannot lose it
        return self._pending.popleft()

    def latest_due(self) -> list[tuple[str, bytes, int]]:
        """(topic, payload, version) of each latest value not handed over in its newest version."""
        return [(t, p, v) for t, (p, v) in self._latest.items() if self._latest_sent.get(t) != v]

    def latest_sent(self, topic: str, version: int) -> None:
        self._latest_sent[topic] = version

    def resend_latest(self) -> None:
        """Make every latest value due again (a broker that restarted without persistence forgot them)."""
        self._latest_sent.clear()

    def handed_over(self, mid: int, event: QueuedEvent | None, epoch: int, lost: bool) -> bool:
        """Record what paho answered for a message taken at ``epoch``; False when it was not kept.

        A message paho did not keep (``lost``), or one handed over while a
        connect happened (paho's copy may be dropped), goes back in the queue
        (events only; latest values are sent again after the connect anyway).
        """
        if lost or epoch != self.epoch:
            self._early_acks.discard(mid)
            if event is not None:
                self._requeue([event])
            return False
        if mid in self._early_acks:
            self._early_acks.discard(mid)
            self._acked(event)
            return True
        self._inflight[mid] = event
        return True

    def rejected(self, event: QueuedEvent | None) -> None:
        """paho refused the message for good (too large, bad topic): an event is dropped and counted."""
        if event is None:
            return
        self._dropped += 1
        if self._journaled:
            self._to_forget.append(event.key)

    def in_flight(self, mid: int) -> bool:
        return mid in self._inflight

    # -- what the broker answers -----------------------------------------------------------------

    def acked(self, mid: int) -> None:
        """The broker acknowledged message ``mid`` (possibly before :meth:`handed_over` registered it)."""
        if mid not in self._inflight:
            if len(self._early_acks) > _EARLY_ACKS_MAX:
                self._early_acks.clear()
            self._early_acks.add(mid)
            return
        self._acked(self._inflight.pop(mid))

    def reconnected(self) -> None:
        """A new connection: what paho held is sent again from here, in order, ahead of the rest."""
        self.epoch += 1
        self._early_acks.clear()
        back = [e for e in self._inflight.values() if e is not None]
        self._inflight.clear()
        self._requeue(back)

    # -- the journal -----------------------------------------------------------------------------

    def attach_journal(self, stored: list[QueuedEvent]) -> None:
        """Start journaling, with the events a journal kept from the last run (oldest first).

        They go first; events published before this are renumbered after them
        and listed for storing too.
        """
        early = list(self._pending)
        for event in stored:
            event.stored = True
        self._pending = deque(stored)
        if stored:
            self._next_key = stored[-1].key + 1
        for event in early:
            event.key = self._next_key
            self._next_key += 1
            self._pending.append(event)
            self._unstored.append(event)
        self._journaled = True
        self._enforce_bound()

    def detach_journal(self) -> None:
        self._journaled = False
        self._unstored, self._to_forget = [], []

    def journal_due(self) -> bool:
        return bool(self._unstored or self._to_forget)

    def journal_work(self) -> tuple[list[QueuedEvent], list[int]]:
        """Take the events to store and the keys to forget; mark the events :meth:`stored` once written."""
        add, self._unstored = self._unstored, []
        forget, self._to_forget = self._to_forget, []
        return add, forget

    @staticmethod
    def stored(events: list[QueuedEvent]) -> None:
        """The journal has ``events`` (or failed to take them, and they go out from memory): they may be sent."""
        for event in events:
            event.stored = True

    # -- internals -------------------------------------------------------------------------------

    def _flight_events(self) -> int:
        return sum(1 for e in self._inflight.values() if e is not None)

    def _acked(self, event: QueuedEvent | None) -> None:
        if event is None:
            return
        self._delivered += 1
        if self._journaled:
            self._to_forget.append(event.key)

    def _requeue(self, events: list[QueuedEvent]) -> None:
        # Back into the pending queue in delivery (key) order.
        if events:
            self._pending = deque(sorted([*events, *self._pending], key=lambda e: e.key))

    def _enforce_bound(self) -> None:
        while self.queued > self.queue_size:
            oldest_flight = min(
                ((mid, e) for mid, e in self._inflight.items() if e is not None),
                key=lambda item: item[1].key,
                default=None,
            )
            if oldest_flight is not None and (not self._pending or oldest_flight[1].key < self._pending[0].key):
                # Already with paho: forget it here; paho may still deliver it, which is harmless.
                mid, dropped = oldest_flight
                del self._inflight[mid]
            else:
                dropped = self._pending.popleft()
            self._dropped += 1
            if self._journaled:
                self._to_forget.append(dropped.key)
