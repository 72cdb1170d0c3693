"""The MQTT delivery queue on its own (no broker, no paho): order, window, bound, reconnects, latest values, journal."""

from __future__ import annotations

import itertools

from edge.sinks.mqtt.outbox import SEND_WINDOW, Outbox, QueuedEvent, latest_value_only


class Paho:
    """Stands in for the sender thread and paho: hands events over under rising message ids."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.mids = itertools.count(1)
        self.sent: list[tuple[int, QueuedEvent]] = []  # (mid, event), in hand-over order

    def send_all(self) -> list[int]:
        """Hand over every event the outbox lets go now; their keys."""
        keys = []
        while (event := self.outbox.next_event()) is not None:
            mid = next(self.mids)
            assert self.outbox.handed_over(mid, event, self.outbox.epoch, lost=False)
            self.sent.append((mid, event))
            keys.append(event.key)
        return keys

    def mid_of(self, key: int) -> int:
        return next(mid for mid, e in reversed(self.sent) if e.key == key)


def events(outbox: Outbox, n: int) -> None:
    for i in range(n):
        outbox.put("events", f'{{"i":{i}}}'.encode(), qos=1, retain=False)


# --- which messages queue and which keep only their latest value ---------------------------------


def test_events_and_other_unretained_messages_queue_while_state_stats_and_retained_ones_keep_the_latest() -> None:
    assert not latest_value_only("events", retain=False)
    assert not latest_value_only("events", retain=True)  # every event counts, whatever the flag says
    assert not latest_value_only("alerts", retain=False)
    assert latest_value_only("state", retain=False)
    assert latest_value_only("stats", retain=False)
    assert latest_value_only("alerts", retain=True)


# --- events: order, window, acknowledgements ---------------------------------------------------


def test_events_go_out_in_publish_order_and_at_most_a_window_at_a_time() -> None:
    outbox = Outbox(queue_size=100, window=3)
    paho = Paho(outbox)
    events(outbox, 5)
    assert paho.send_all() == [1, 2, 3]
    assert paho.send_all() == []  # the window is full until the broker acknowledges one
    outbox.acked(paho.mid_of(1))
    assert paho.send_all() == [4]
    assert (outbox.queued, outbox.delivered) == (4, 1)


def test_an_event_counts_as_delivered_only_once_acknowledged() -> None:
    outbox = Outbox(queue_size=100)
    paho = Paho(outbox)
    events(outbox, 2)
    paho.send_all()
    assert (outbox.queued, outbox.delivered) == (2, 0)  # handed over is not delivered
    for mid, _ in paho.sent:
        outbox.acked(mid)
    assert (outbox.queued, outbox.delivered, outbox.undelivered()) == (0, 2, False)


def test_an_ack_that_arrives_before_the_hand_over_is_recorded_still_counts() -> None:
    outbox = Outbox(queue_size=100)
    events(outbox, 1)
    event = outbox.next_event()
    assert event is not None
    outbox.acked(7)  # paho's network thread was quicker than publish() returning
    assert outbox.handed_over(7, event, outbox.epoch, lost=False)
    assert (outbox.queued, outbox.delivered, outbox.in_flight(7)) == (0, 1, False)


def test_stray_acks_do_not_pile_up() -> None:
    outbox = Outbox(queue_size=100)
    for mid in range(1000, 1000 + 10 * SEND_WINDOW + 2):  # acks of messages this outbox never registered
        outbox.acked(mid)
    events(outbox, 1)
    event = outbox.next_event()
    assert event is not None
    assert outbox.handed_over(1000, event, outbox.epoch, lost=False)
    assert outbox.in_flight(1000) and outbox.delivered == 0  # that old ack was forgotten, not taken for this one


def test_the_window_never_exceeds_the_queue_size_and_is_at_least_one() -> None:
    assert Outbox(queue_size=5).window == 5
    assert Outbox(queue_size=10_000).window == SEND_WINDOW
    assert Outbox(queue_size=3, window=0).window == 1


# --- the bound -----------------------------------------------------------------------------------


def test_a_full_queue_drops_the_oldest_events_and_counts_them() -> None:
    outbox = Outbox(queue_size=3)
    paho = Paho(outbox)
    events(outbox, 5)
    assert (outbox.queued, outbox.dropped) == (3, 2)
    assert paho.send_all() == [3, 4, 5]


def test_the_oldest_event_is_dropped_even_when_it_is_already_with_paho() -> None:
    outbox = Outbox(queue_size=3, window=2)
    paho = Paho(outbox)
    events(outbox, 3)
    assert paho.send_all() == [1, 2]
    events(outbox, 1)  # key 4: one too many; key 1 (in flight) is the oldest
    assert (outbox.queued, outbox.dropped) == (3, 1)
    assert not outbox.in_flight(paho.mid_of(1)) and outbox.in_flight(paho.mid_of(2))
    outbox.acked(paho.mid_of(1))  # paho delivered it after all: harmless, and not counted twice
    assert (outbox.queued, outbox.delivered, outbox.dropped) == (3, 0, 1)


def test_a_message_paho_refuses_for_good_is_dropped_and_counted() -> None:
    outbox = Outbox(queue_size=10)
    events(outbox, 1)
    outbox.rejected(outbox.next_event())
    outbox.rejected(None)  # a retained message: nothing to count
    assert (outbox.queued, outbox.dropped) == (0, 1)


# --- reconnects ----------------------------------------------------------------------------------


def test_after_a_reconnect_unacknowledged_events_go_again_first_and_in_order() -> None:
    outbox = Outbox(queue_size=100, window=3)
    paho = Paho(outbox)
    events(outbox, 5)
    assert paho.send_all() == [1, 2, 3]
    outbox.acked(paho.mid_of(2))
    outbox.reconnected()
    assert outbox.queued == 4
    assert paho.send_all() == [1, 3, 4]  # at-least-once: 1 and 3 again, then on; never reordered


def test_a_hand_over_that_straddles_a_reconnect_is_sent_again() -> None:
    outbox = Outbox(queue_size=100)
    paho = Paho(outbox)
    events(outbox, 2)
    first = outbox.next_event()
    assert first is not None
    epoch = outbox.epoch  # the sender read it before calling paho ...
    outbox.reconnected()  # ... and a connect happened meanwhile: paho may drop its copy
    assert not outbox.handed_over(1, first, epoch, lost=False)
    assert not outbox.in_flight(1)
    assert paho.send_all() == [1, 2]


def test_a_message_paho_did_not_keep_is_sent_again() -> None:
    outbox = Outbox(queue_size=100)
    paho = Paho(outbox)
    events(outbox, 1)
    event = outbox.next_event()
    assert event is not None
    assert not outbox.handed_over(1, event, outbox.epoch, lost=True)  # e.g. QoS 0 without a connection
    assert outbox.queued == 1 and paho.send_all() == [1]


# --- latest values -------------------------------------------------------------------------------


def test_only_the_newest_state_is_due_and_it_stays_due_until_sent() -> None:
    outbox = Outbox(queue_size=100)
    for payload in (b"sad", b"happy", b"fear"):
        outbox.put("state", payload, qos=0, retain=True)
    outbox.put("stats", b"fps", qos=0, retain=True)
    due = outbox.latest_due()
    assert [(t, p) for t, p, _ in due] == [("state", b"fear"), ("stats", b"fps")]
    assert outbox.queued == 0 and outbox.undelivered() and outbox.sendable()  # latest values are not events
    for topic, _, version in due:
        outbox.latest_sent(topic, version)
    assert outbox.latest_due() == [] and not outbox.undelivered() and not outbox.sendable()
    outbox.put("state", b"neutral", qos=0, retain=True)
    assert [(t, p) for t, p, _ in outbox.latest_due()] == [("state", b"neutral")]


def test_a_value_that_changed_while_being_sent_is_still_due() -> None:
    outbox = Outbox(queue_size=100)
    outbox.put("state", b"sad", qos=0, retain=True)
    [(topic, _, version)] = outbox.latest_due()  # the sender took "sad" ...
    outbox.put("state", b"happy", qos=0, retain=True)  # ... the pipeline published "happy" meanwhile
    outbox.latest_sent(topic, version)
    assert [p for _, p, _ in outbox.latest_due()] == [b"happy"]


def test_every_latest_value_is_due_again_for_a_broker_that_forgot_them() -> None:
    outbox = Outbox(queue_size=100)
    outbox.put("state", b"sad", qos=0, retain=True)
    for topic, _, version in outbox.latest_due():
        outbox.latest_sent(topic, version)
    outbox.resend_latest()
    assert [p for _, p, _ in outbox.latest_due()] == [b"sad"]


def test_retained_messages_with_paho_take_no_room_in_the_event_window() -> None:
    outbox = Outbox(queue_size=100, window=1)
    paho = Paho(outbox)
    assert outbox.handed_over(50, None, outbox.epoch, lost=False)  # availability, state, discovery …
    events(outbox, 1)
    assert outbox.in_flight(50) and outbox.queued == 1
    assert paho.send_all() == [1]
    outbox.acked(50)
    assert not outbox.in_flight(50) and outbox.delivered == 0


# --- the journal ---------------------------------------------------------------------------------


def test_without_a_journal_nothing_is_listed_for_the_disk() -> None:
    outbox = Outbox(queue_size=1)
    paho = Paho(outbox)
    events(outbox, 2)  # one dropped
    paho.send_all()
    outbox.acked(paho.mid_of(2))
    assert not outbox.journal_due() and outbox.journal_work() == ([], [])


def test_with_a_journal_an_event_is_stored_before_it_is_sent() -> None:
    outbox = Outbox(queue_size=100)
    paho = Paho(outbox)
    outbox.attach_journal([])
    events(outbox, 2)
    assert paho.send_all() == []  # a crash after the send must not lose it
    add, forget = outbox.journal_work()
    assert [e.key for e in add] == [1, 2] and forget == []
    outbox.stored(add)
    assert paho.send_all() == [1, 2]


def test_the_journal_learns_which_keys_were_acknowledged_or_dropped() -> None:
    outbox = Outbox(queue_size=2)
    paho = Paho(outbox)
    outbox.attach_journal([])
    events(outbox, 3)  # key 1 dropped on overflow
    add, forget = outbox.journal_work()
    assert forget == [1]  # written and forgotten in the same transaction: the disk ends up without it
    outbox.stored(add)
    paho.send_all()
    outbox.acked(paho.mid_of(3))
    outbox.rejected(QueuedEvent(9, "events", b"{}", 1))
    add, forget = outbox.journal_work()
    assert add == [] and forget == [3, 9]
    assert not outbox.journal_due()


def test_stored_events_go_first_and_earlier_ones_are_renumbered_after_them() -> None:
    outbox = Outbox(queue_size=100)
    paho = Paho(outbox)
    events(outbox, 2)  # published before start() opened the journal
    stored = [QueuedEvent(key, "events", b"{}", 1) for key in (40, 41, 42)]
    outbox.attach_journal(stored)
    assert outbox.queued == 5
    add, _ = outbox.journal_work()
    assert [e.key for e in add] == [43, 44]  # the early ones, to store too; the stored ones are not written again
    assert paho.send_all() == [40, 41, 42]  # the early two wait for the disk
    outbox.stored(add)
    assert paho.send_all() == [43, 44]
    events(outbox, 1)
    assert [e.key for e in outbox.journal_work()[0]] == [45]


def test_stored_events_beyond_the_queue_size_drop_the_oldest() -> None:
    outbox = Outbox(queue_size=2)
    outbox.attach_journal([QueuedEvent(key, "events", b"{}", 1) for key in (1, 2, 3)])
    assert (outbox.queued, outbox.dropped) == (2, 1)
    assert outbox.journal_work() == ([], [1])


def test_after_the_journal_is_detached_nothing_more_is_listed() -> None:
    outbox = Outbox(queue_size=100)
    paho = Paho(outbox)
    outbox.attach_journal([])
    outbox.detach_journal()
    events(outbox, 1)
    assert not outbox.journal_due()
    assert paho.send_all() == [1]  # and nothing waits for a disk that is gone
