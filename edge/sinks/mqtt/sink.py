"""MQTT sink: publishes the pipeline's messages to a broker (paho-mqtt 2.x) and survives outages.

What goes to which topic, retained or not, and the delivery rules (kept until
acknowledged, in order, at least once, oldest dropped when the queue is full)
are specified once, in docs/mqtt.md; the outbox (``outbox``) implements them.

Threads: ``publish()`` runs on the pipeline thread and only encodes the payload
and appends to in-memory structures under a lock that no other thread holds
during I/O. A sender thread does all disk and paho work; paho's network thread
(``loop_start``) does the socket I/O and reconnects with exponential backoff
(``mqtt.reconnect_min_s`` … ``mqtt.reconnect_max_s``). Connection problems are
logged as one warning per change of problem, naming ``host:port`` and the
likely fix.

This module is the threads and the paho callbacks; what to send next and when
an event counts as delivered or dropped is decided by the pure ``outbox``, the
client and its error sentences come from ``client``, the disk from ``journal``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge.labels import EMOTIONS
from edge.protocols import Message
from edge.settings import MqttSettings
from edge.sinks.droplog import DropLog
from edge.sinks.mqtt import discovery
from edge.sinks.mqtt.client import (
    SocketErrors,
    describe_early_close,
    describe_exception,
    describe_no_answer,
    describe_receive_error,
    describe_refusal,
    make_client,
)
from edge.sinks.mqtt.journal import EventJournal, StoredEvent, highest_seqs, open_journal
from edge.sinks.mqtt.outbox import Outbox, QueuedEvent
from edge.sinks.wire import AVAILABILITY, EVENTS, OFFLINE, ONLINE, device_topic, encode_payload

if TYPE_CHECKING:
    from edge.messages import Envelope

log = logging.getLogger(__name__)


class MqttSink:
    """Publishes to ``{prefix}/{device_id}/…``; see the module docstring for the delivery rules."""

    name = "mqtt"
    on_closed: Callable[[], None] | None = None  # a broker that goes away comes back: the outbox keeps the events meanwhile

    def __init__(
        self,
        settings: MqttSettings,
        device_id: str,
        envelope: Envelope | None = None,
        labels: tuple[str, ...] = EMOTIONS,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.labels = labels
        self.client_id = settings.client_id or f"deepfer-{device_id}"
        self.broker = f"{settings.host}:{settings.port}"
        self.availability_topic = self._topic(AVAILABILITY)
        self._envelope = envelope

        self._cond = threading.Condition(threading.Lock())  # guards everything below; never held during I/O
        self._outbox = Outbox(settings.queue_size)
        self._connected = False
        self._announce = False  # discovery/state/stats/online due after a connect
        self._ha_announce = False
        self._ha_cleared = False
        self._stopping = False
        self._drop_log = DropLog()
        self._drops_due = False  # report drops now (the outage ended), not at the next interval
        self._connects = 0
        self._failures = 0
        self._last_error: str | None = None
        self._problem: str | None = None
        self._attempt_answered = True
        self._socket_errors = SocketErrors()
        self._ha_status = discovery.StatusListener()
        self._journal: EventJournal | None = None
        self._journal_error: str | None = None
        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the queue, configure the client and connect in the background; returns at once.

        Raises ConfigError for settings a person must fix (unreadable
        password_file or TLS files, unusable state_dir).
        """
        if self._client is not None:
            return
        client = make_client(self.settings, self.client_id)
        self._stopping = False  # a stopped sink may be started again
        if self.settings.persist:
            self._open_journal()
            if self._envelope is not None and self._envelope.state_file is None:
                log.warning(
                    "mqtt.persist is on but the message envelope keeps no sequence file; "
                    "seq numbers restart at 1 after a restart while old events are still queued"
                )
        client.will_set(self.availability_topic, payload=OFFLINE, qos=1, retain=True)
        # Room for the send window plus a reconnect's worth of discovery, state, stats and availability.
        client.max_inflight_messages_set(self._outbox.window + len(self.labels) + 16)
        client.on_pre_connect = self._guard(self._on_pre_connect)
        client.on_connect = self._guard(self._on_connect)
        client.on_connect_fail = self._guard(self._on_connect_fail)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_publish = self._guard(self._on_publish)
        client.on_log = self._guard(self._socket_errors.on_log)
        if self.settings.homeassistant:
            client.message_callback_add(discovery.status_topic(self.settings.discovery_prefix), self._guard(self._on_ha_status))
        self._client = client
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()
        log.info(
            "MQTT: publishing to %s as %s under %s/ (events QoS %d%s)",
            self.broker, self.client_id, self._topic(""), self.settings.qos,
            f", queue kept in {self._journal.path}" if self._journal else "",
        )
        client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        client.loop_start()

    def publish(self, message: Message) -> None:
        """Queue ``message``; never blocks on the network or on disk."""
        if message.topic == AVAILABILITY:
            return  # this sink owns availability (online on connect, will and stop say offline)
        payload = encode_payload(message.payload)
        qos = self.settings.qos if message.topic == EVENTS else message.qos
        with self._cond:
            self._outbox.put(message.topic, payload, qos, message.retain)
            self._cond.notify_all()

    def status(self) -> Mapping[str, Any]:
        """connected, broker ("host:port"), queued (events not acknowledged yet), delivered (events
        acknowledged), dropped_events, reconnects, failed_attempts, last_error (the latest connection
        problem as a sentence, kept after recovery; None if there was none),
        persist, persist_error."""
        with self._cond:
            return {
                "connected": self._connected,
                "broker": self.broker,
                "queued": self._outbox.queued,
                "delivered": self._outbox.delivered,
                "dropped_events": self._outbox.dropped,
                "reconnects": max(0, self._connects - 1),
                "failed_attempts": self._failures,
                "last_error": self._last_error,
                "persist": self._journal is not None,
                "persist_error": self._journal_error,
            }

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``), publish ``offline``, disconnect.

        Waits for acknowledgements only while connected; with ``persist`` the
        unacknowledged events stay on disk for the next start.
        """
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._cond.notify_all()
            while self._connected and self._outbox.undelivered() and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(max(1.0, deadline - time.monotonic()))
        self._log_drops(final=True)
        offline_mid = None
        if self._connected:
            offline_mid = self._send(self.availability_topic, OFFLINE.encode(), qos=1, retain=True, event=None)
            with self._cond:
                while offline_mid is not None and self._outbox.in_flight(offline_mid) and self._connected:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(0.1, left))
        client.disconnect()
        client.loop_stop()
        self._flush_journal()
        with self._cond:
            left = self._outbox.queued
        if left:
            kept = f"kept in {self._journal.path} for the next start" if self._journal else "lost (enable mqtt.persist to keep them)"
            log.warning("MQTT: %d events not acknowledged by %s at stop; %s", left, self.broker, kept)
        if self._journal is not None:
            with self._cond:
                self._outbox.detach_journal()
            self._journal.close()
            self._journal = None
        self._client = None

    # -- helpers -------------------------------------------------------------------------------

    def _topic(self, topic: str) -> str:
        return device_topic(self.settings.prefix, self.device_id, topic)

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Paho callbacks run on its network thread; an exception there would kill it."""

        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except Exception:
                log.exception("MQTT: internal error in %s", fn.__name__)

        wrapper.__name__ = fn.__name__
        return wrapper

    def _open_journal(self) -> None:
        journal, stored = open_journal(self.settings)
        self._journal = journal
        if self._envelope is not None:
            for topic, seq in highest_seqs(stored).items():
                self._envelope.continue_after(topic, seq)
        with self._cond:
            self._outbox.attach_journal([QueuedEvent(e.key, e.topic, e.payload, e.qos) for e in stored])
        if stored:
            log.info("MQTT: %d undelivered events from the last run are queued (%s)", len(stored), journal.path)

    def _flush_journal(self) -> None:
        if self._journal is None:
            return
        with self._cond:
            add, forget = self._outbox.journal_work()
        error = self._journal.store(add=[StoredEvent(e.key, e.topic, e.payload, e.qos) for e in add], remove=forget)
        # Not retried on failure: these events go out from memory, and acked ones left on disk
        # are merely sent again after a restart (at-least-once).
        with self._cond:
            self._outbox.stored(add)
        if error is not None and error != self._journal_error:
            log.warning("MQTT: %s", error)
        self._journal_error = error

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, event: QueuedEvent | None) -> int | None:
        """Hand one message to paho (never under our lock: paho calls on_publish holding its own)."""
        client = self._client
        assert client is not None
        with self._cond:
            epoch = self._outbox.epoch
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as exc:  # payload too large for MQTT, bad topic: it can never be sent
            log.error("MQTT: cannot publish to %s (%s); message dropped", topic, exc)
            with self._cond:
                self._outbox.rejected(event)
            return None
        lost = info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN) or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0  # paho keeps no QoS 0 message without a connection
        )
        with self._cond:
            return info.mid if self._outbox.handed_over(info.mid, event, epoch, lost) else None

    # -- sender thread -------------------------------------------------------------------------

    def _run_sender(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._work_ready():
                        self._cond.wait(1.0)
                    stopping = self._stopping
                self._flush_journal()
                self._log_drops()
                if stopping:
                    return
                if self._connected:
                    self._send_due()
        except Exception:
            log.exception("MQTT: sender thread failed; messages are no longer sent")

    def _work_ready(self) -> bool:
        # Called with the lock held.
        if self._stopping or self._outbox.journal_due():
            return True
        if not self._connected:
            return False
        return self._announce or self._ha_announce or self._outbox.sendable()

    def _send_due(self) -> None:
        with self._cond:
            announce, self._announce = self._announce, False
            ha_announce, self._ha_announce = self._ha_announce, False
        if announce or ha_announce:
            self._send_discovery()
        if announce:
            # A broker that restarted without persistence forgot the retained values: send them again.
            with self._cond:
                self._outbox.resend_latest()
        self._send_latest()
        if announce:
            self._send(self.availability_topic, ONLINE.encode(), qos=1, retain=True, event=None)
        while self._connected:
            with self._cond:
                event = None if self._stopping else self._outbox.next_event()
            if event is None:
                return
            self._send(self._topic(event.topic), event.payload, event.qos, retain=False, event=event)

    def _send_latest(self) -> None:
        with self._cond:
            due = self._outbox.latest_due()
        for topic, payload, version in due:
            self._send(self._topic(topic), payload, qos=1, retain=True, event=None)
            with self._cond:
                self._outbox.latest_sent(topic, version)

    def _send_discovery(self) -> None:
        if not self.settings.homeassistant and self._ha_cleared:
            return  # the removals went out once; nothing of ours is left in Home Assistant
        for topic, payload in discovery.discovery_messages(self.settings, self.device_id, self.labels).items():
            self._send(topic, payload, qos=1, retain=True, event=None)
        # Removals (discovery off) clear entities an earlier run left behind: once is enough.
        self._ha_cleared = not self.settings.homeassistant

    def _log_drops(self, final: bool = False) -> None:
        """Report drops once per interval; when the outage ends and at stop, say the total the counter holds."""
        with self._cond:
            dropped = self._outbox.dropped
            due, self._drops_due = self._drops_due or final, False
        new = self._drop_log.due(dropped, force=due)
        if new:
            log.warning(
                "MQTT: event queue full (mqtt.queue_size = %d) while %s is unreachable; dropped the %d oldest events "
                "(%d in all, as dropped_events in stats)",
                self.settings.queue_size, self.broker, new, dropped,
            )

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _report_problem(self, message: str) -> None:
        with self._cond:
            self._failures += 1
            self._last_error = message
            changed = message != self._problem
            self._problem = message
        if changed:
            log.warning("MQTT: %s; retrying in the background", message)
        else:
            log.debug("MQTT: still failing: %s", message)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._attempt_answered = False
        self._socket_errors.reset()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self._attempt_answered = True
        if reason.is_failure:
            self._report_problem(describe_refusal(reason, self.settings))
            return
        # Paho would re-send its unacknowledged copies itself, ahead of or behind ours;
        # this sink re-sends from its own queue instead, in order.
        client.drop_out_messages()  # paho-mqtt >= 2.2, which pyproject requires
        if self.settings.homeassistant:
            client.subscribe(discovery.status_topic(self.settings.discovery_prefix), qos=1)
        with self._cond:
            self._outbox.reconnected()
            self._connected = True
            self._connects += 1
            self._announce = True
            had_problem, self._problem = self._problem, None
            self._drops_due = True
            connects = self._connects
            queued = self._outbox.queued
            self._cond.notify_all()
        if had_problem:
            log.info("MQTT: connected to %s again (%d events queued)", self.broker, queued)
        elif connects == 1:
            log.info("MQTT: connected to %s", self.broker)
        else:
            log.info("MQTT: reconnected to %s (%d events queued)", self.broker, queued)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # Paho calls this inside its ``except OSError`` block: the exception is the current one.
        self._attempt_answered = True
        self._report_problem(describe_exception(sys.exc_info()[1], self.settings))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        with self._cond:
            was_connected, self._connected = self._connected, False
            stopping = self._stopping
            self._cond.notify_all()
        if stopping:
            return
        if not self._attempt_answered:
            self._attempt_answered = True
            if reason.getName() == "Keep alive timeout":  # paho gave up waiting: the broker never closed anything
                self._report_problem(describe_no_answer(self.settings, self.settings.keepalive_s))
            elif self._socket_errors.last:
                self._report_problem(describe_receive_error(self._socket_errors.last, self.settings))
            else:
                self._report_problem(describe_early_close(self.settings))
        elif was_connected:
            name = reason.getName()
            # MQTT 3.1.1 carries no reason for a dropped connection; paho then says "Unspecified error".
            why = "" if name in ("Unspecified error", "Success") else f" ({name})"
            self._report_problem(f"lost the connection to MQTT broker {self.broker}{why}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self._cond:
            self._outbox.acked(mid)
            self._cond.notify_all()

    def _on_ha_status(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._ha_status.is_birth(message.topic, message.payload, time.monotonic()):
            with self._cond:
                self._ha_announce = True
                self._cond.notify_all()
