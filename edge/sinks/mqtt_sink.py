"""MQTT sink: publishes the pipeline's messages to a broker (paho-mqtt 2.x) and survives outages.

Topics are ``{prefix}/{device_id}/{topic}``:

- ``events`` (QoS ``mqtt.qos``, not retained): every event is kept in a
  bounded queue (``mqtt.queue_size``) until the broker acknowledged it
  (PUBACK/PUBCOMP, i.e. ``on_publish`` for its message id) and is delivered
  in order after a reconnect. When the bound is reached the OLDEST event is
  dropped and counted (``dropped_events``). With ``mqtt.persist`` the queue
  lives in ``{state_dir}/mqtt-events.sqlite3`` (see ``event_journal``), so a
  daemon restart or ``kill -9`` during an outage loses nothing that reached
  the disk (the window is the few milliseconds between ``publish()`` and the
  sender thread's commit).
- ``state``, ``stats`` (retained, QoS 1): latest value wins; only the newest
  of each is kept, and it is re-published after every reconnect (a broker
  without persistence forgets retained messages when it restarts).
- ``availability`` (owned by this sink; messages for it are ignored):
  retained plain ``online`` after each (re)connect, sent after the latest
  state and stats; the last will is ``offline`` (retained, QoS 1). A clean
  ``stop()`` first waits (within its timeout, while connected) for the queued
  events to be acknowledged, then publishes ``offline`` and disconnects.
- other topics: retained messages are latest-value like state; the rest are
  queued like events (at their own QoS).
- Home Assistant discovery configs when ``mqtt.homeassistant`` is on (see
  ``edge.homeassistant``), before ``online``; re-sent when HA announces itself.

Delivery is AT-LEAST-ONCE: an event whose acknowledgement was lost with the
connection (or whose ack had not been recorded on disk when the daemon died)
is sent again, so subscribers may see a ``seq`` twice and should de-duplicate
on it. Events are never reordered: after a reconnect the unacknowledged ones
are re-sent first. (Paho's own store of unacknowledged messages is dropped on
reconnect, ``Client.drop_out_messages``, so that this sink's queue is the one
source of truth and paho's internal queue stays bounded by the send window.)

Threads: ``publish()`` runs on the pipeline thread and only encodes the payload
and appends to in-memory structures under a lock that no other thread holds
during I/O. A sender thread does all disk and paho work; paho's network thread
(``loop_start``) does the socket I/O and reconnects with exponential backoff
(``mqtt.reconnect_min_s`` … ``mqtt.reconnect_max_s``). Connection problems are
logged as one warning per change of problem, naming ``host:port`` and the
likely fix.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge import homeassistant
from edge.labels import EMOTIONS
from edge.protocols import Message
from edge.settings import ConfigError, MqttSettings
from edge.sinks.event_journal import EventJournal, StoredEvent
from edge.sinks.wire import AVAILABILITY, OFFLINE, ONLINE, device_topic, encode_payload

if TYPE_CHECKING:
    from edge.messages import Envelope

log = logging.getLogger(__name__)

EVENTS = "events"
LATEST_VALUE_TOPICS = ("state", "stats")
SEND_WINDOW = 20  # events handed to paho and not yet acknowledged; bounds paho's own queue
_DROP_LOG_INTERVAL_S = 60.0
# Home Assistant's birth message is "online"; anything much longer is not one, and is not even copied.
HA_STATUS_MAX_BYTES = 64
_HA_LOG_INTERVAL_S = 60.0
_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64


def sequence_file(settings: MqttSettings) -> Path | None:
    """Where the Envelope should keep its ``seq`` counters: in ``state_dir`` when events persist, else None.

    Persisted events outlive the daemon; their ``seq`` must keep rising across
    restarts too, or subscribers would see old numbers again.
    """
    return settings.state_dir / "sequence.json" if settings.persist else None


def journal_file(settings: MqttSettings) -> Path:
    return settings.state_dir / "mqtt-events.sqlite3"


def highest_seqs(stored: list[StoredEvent]) -> dict[str, int]:
    """Relative topic -> the highest envelope ``seq`` among the stored events (payloads without one are passed over)."""
    out: dict[str, int] = {}
    for event in stored:
        try:
            body = json.loads(event.payload)
        except ValueError:
            continue
        seq = body.get("seq") if isinstance(body, dict) else None
        if isinstance(seq, int) and seq > out.get(event.topic, 0):
            out[event.topic] = seq
    return out


# --- connection set-up and error sentences (shared with check_broker) ---------------------------


def read_password(settings: MqttSettings) -> str | None:
    """The password from ``password_file`` (first line) or ``password``; raises ConfigError naming the field."""
    if settings.password_file is not None:
        try:
            text = settings.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"mqtt.password_file {settings.password_file} cannot be read ({exc.strerror}); "
                "fix the path or its permissions"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"mqtt.password_file {settings.password_file} is not UTF-8 text; save the password as UTF-8") from None
        lines = text.splitlines()
        return lines[0] if lines else ""
    if settings.password is not None:
        return settings.password.get_secret_value()
    return None


def make_client(settings: MqttSettings, client_id: str = "", password: str | None = None) -> mqtt.Client:
    """A paho client (callback API 2, MQTT 3.1.1) with the credentials and TLS of ``settings``, not connected.

    ``password`` defaults to :func:`read_password`; raises ConfigError for
    unreadable password or TLS files. Reconnect delays follow the settings.
    """
    if password is None:
        password = read_password(settings)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, password)
    elif password:
        log.warning("mqtt.password is set without mqtt.username; MQTT sends no password without a user name, so it is ignored")
    if settings.tls:
        for field, path in (("mqtt.ca_file", settings.ca_file), ("mqtt.cert_file", settings.cert_file), ("mqtt.key_file", settings.key_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{field} {path} does not exist; fix the path or remove the setting")
        try:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                certfile=str(settings.cert_file) if settings.cert_file else None,
                keyfile=str(settings.key_file) if settings.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"TLS files cannot be used ({exc}); check mqtt.ca_file, mqtt.cert_file and mqtt.key_file are PEM files that belong together"
            ) from None
        client.tls_insecure_set(settings.tls_insecure)
    elif settings.ca_file or settings.cert_file:
        log.warning("mqtt.ca_file/cert_file are set but mqtt.tls is false; the connection is NOT encrypted")
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
    return client


def describe_exception(exc: BaseException | None, settings: MqttSettings) -> str:
    """One sentence for a failed connection attempt: what happened at host:port and what to check."""
    where = f"{settings.host}:{settings.port}"
    if settings.tls and _plain_port_answer(exc):
        return (
            f"MQTT broker {where} dropped the connection during the TLS handshake ({_reason(exc)}); "
            "this port does not seem to speak TLS: set mqtt.port to the broker's TLS port (usually 8883) or mqtt.tls = false"
        )
    if isinstance(exc, ssl.SSLError) and (hint := tls_rejection(exc.reason or "", str(exc), settings)):
        return hint
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        detail = getattr(exc, "verify_message", None) or str(exc)
        if code in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return (
                f"TLS certificate of MQTT broker {where} does not match the name {settings.host!r} ({detail}); "
                "set mqtt.host to a name the certificate holds, or mqtt.tls_insecure = true for testing"
            )
        return (
            f"TLS certificate of MQTT broker {where} is not trusted ({detail}); "
            "set mqtt.ca_file to the CA certificate that signed the broker's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with MQTT broker {where} failed ({exc.reason or exc}); "
            "check mqtt.ca_file, mqtt.cert_file and mqtt.key_file against the broker's TLS settings"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"MQTT broker {where} refused the connection; check that the broker runs and listens there (mqtt.host, mqtt.port)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve MQTT broker host {settings.host!r} ({exc.strerror}); check mqtt.host"
    if isinstance(exc, TimeoutError):
        return f"no answer from MQTT broker {where}; check mqtt.host, mqtt.port and any firewall between"
    if isinstance(exc, OSError):
        return f"cannot connect to MQTT broker {where} ({exc.strerror or exc}); check mqtt.host and mqtt.port"
    if exc is None:
        return f"cannot connect to MQTT broker {where}; check mqtt.host and mqtt.port"
    return f"cannot connect to MQTT broker {where} ({exc!r})"


def describe_refusal(reason: Any, settings: MqttSettings) -> str:
    """One sentence for a CONNACK refusal (bad credentials, not authorised, …)."""
    where = f"{settings.host}:{settings.port}"
    name = reason.getName() if hasattr(reason, "getName") else str(reason)
    if name in ("Not authorized", "Bad user name or password"):
        who = f"user {settings.username!r}" if settings.username else "anonymous clients (no mqtt.username)"
        return (
            f"MQTT broker {where} rejected the login of {who} ({name}); "
            "check mqtt.username and mqtt.password / mqtt.password_file, and the broker's ACL"
        )
    if name == "Client identifier not valid":
        return f"MQTT broker {where} rejected the client id ({name}); set mqtt.client_id"
    return f"MQTT broker {where} refused the connection ({name})"


# OpenSSL alerts a broker sends when it refuses the client's certificate (or the lack of one).
_CERT_REQUIRED = ("TLSV13_ALERT_CERTIFICATE_REQUIRED",)
_CERT_REJECTED = (
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR",
)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _plain_port_answer(exc: BaseException | None) -> bool:
    """What a TLS client sees from a port that speaks plain MQTT: a reset, an EOF or non-TLS bytes mid-handshake."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return True
    return isinstance(exc, ssl.SSLError) and exc.reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING", "RECORD_LAYER_FAILURE")


def tls_rejection(reason: str, detail: str, settings: MqttSettings) -> str | None:
    """The sentence for a broker's TLS alert about the client certificate, or None for other TLS errors."""
    where = f"{settings.host}:{settings.port}"
    if reason in _CERT_REQUIRED or (reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and settings.cert_file is None):
        if settings.cert_file is None:
            return (
                f"MQTT broker {where} requires a client certificate ({detail}); "
                "set mqtt.cert_file and mqtt.key_file to a certificate signed by a CA the broker trusts"
            )
        return f"MQTT broker {where} did not accept the client certificate {settings.cert_file} ({detail}); check mqtt.cert_file and mqtt.key_file"
    if reason in _CERT_REJECTED:
        return (
            f"MQTT broker {where} rejected the client certificate {settings.cert_file or '(none)'} ({detail}); "
            "set mqtt.cert_file and mqtt.key_file to a certificate signed by a CA the broker trusts (its cafile), "
            "and check that it has not expired"
        )
    return None


def describe_receive_error(text: str, settings: MqttSettings) -> str:
    """One sentence for a connection that failed while waiting for the login answer, from paho's socket error text."""
    where = f"{settings.host}:{settings.port}"
    detail = text.removeprefix("failed to receive on socket: ")
    reason = detail[len("[SSL: "):detail.find("]")] if detail.startswith("[SSL: ") else ""
    if hint := tls_rejection(reason, detail, settings):
        return hint
    if not settings.tls:
        # A TLS port answers a plain MQTT login by resetting or closing the connection.
        return (
            f"MQTT broker {where} broke off the connection before answering ({detail}); "
            "if it expects TLS set mqtt.tls = true (and mqtt.port, usually 8883)"
        )
    if "EOF" in detail:
        # A broker that refuses the client certificate after a TLS 1.3 handshake often just closes; its alert may be lost.
        cert = f"the client certificate {settings.cert_file}" if settings.cert_file else "a missing client certificate"
        return (
            f"MQTT broker {where} closed the TLS connection before answering the login ({detail}); "
            f"it may have refused {cert}: check mqtt.cert_file and mqtt.key_file, and the broker's log"
        )
    return f"MQTT broker {where} broke off the connection before answering the login ({detail}); check the broker's log"


def describe_early_close(settings: MqttSettings) -> str:
    """The broker closed the connection without answering the login and without an error on our side."""
    where = f"{settings.host}:{settings.port}"
    if settings.tls:
        # The handshake succeeded, so the port does speak TLS: the refusal came after it.
        return (
            f"MQTT broker {where} closed the connection after the TLS handshake without answering the login; "
            "check the broker's log (it may refuse this client id, certificate or protocol version)"
        )
    return (
        f"MQTT broker {where} closed the connection before answering; "
        "if it expects TLS set mqtt.tls = true (and mqtt.port, usually 8883)"
    )


def describe_no_answer(settings: MqttSettings, waited_s: float) -> str:
    """The connection stayed open but the login was never answered: a hung broker or something that is not MQTT."""
    return (
        f"MQTT broker {settings.host}:{settings.port} accepted the connection but did not answer the login within {waited_s:g} s; "
        "check that it is an MQTT broker and that it is not hung or overloaded"
    )


class _SocketErrors:
    """Paho reports why a read failed only in its log; keep the attempt's first such line for the error sentence.

    The first one is the cause (a TLS alert); reads after it only see the closed socket.
    """

    def __init__(self) -> None:
        self.last: str | None = None

    def on_log(self, client: mqtt.Client, userdata: Any, level: int, text: Any) -> None:
        message = str(text)
        if self.last is None and level == mqtt.MQTT_LOG_ERR and message.startswith("failed to receive on socket"):
            self.last = message


def check_broker(settings: MqttSettings, timeout: float = 5.0) -> str | None:
    """Connect once: None when the broker is reachable and accepts the credentials, else an error sentence.

    Uses its own client id (``…-check``) so that it does not push a running
    daemon's session off the broker, and no last will.
    """
    try:
        client = make_client(settings, f"{settings.client_id or 'deepfer'}-check-{time.monotonic_ns() % 100000}")
    except ConfigError as exc:
        return str(exc)
    result: dict[str, Any] = {}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        result["reason"] = reason

    client.on_connect = on_connect
    socket_errors = _SocketErrors()
    client.on_log = socket_errors.on_log
    client.connect_timeout = timeout
    try:
        client.connect(settings.host, settings.port, keepalive=max(5, int(timeout) + 5))
    except OSError as exc:
        return describe_exception(exc, settings)
    deadline = time.monotonic() + timeout
    try:
        while "reason" not in result and time.monotonic() < deadline:
            if client.loop(timeout=0.1) not in (MQTTErrorCode.MQTT_ERR_SUCCESS,):
                if "reason" not in result:
                    if socket_errors.last:
                        return describe_receive_error(socket_errors.last, settings)
                    return describe_early_close(settings)
        reason = result.get("reason")
        if reason is None:
            return describe_no_answer(settings, timeout)
        if reason.is_failure:
            return describe_refusal(reason, settings)
        return None
    finally:
        try:
            client.disconnect()
        except Exception:  # the connection may be gone already; nothing to clean up then
            pass


def _drop_paho_store(client: mqtt.Client) -> None:
    """Forget paho's unacknowledged QoS>0 messages (it would re-send them on reconnect)."""
    client.drop_out_messages()  # paho-mqtt >= 2.2, which pyproject requires


# --- the sink ------------------------------------------------------------------------------------


@dataclass
class _Event:
    key: int
    topic: str
    payload: bytes
    qos: int
    stored: bool = False


@dataclass
class _InFlight:
    event: _Event | None  # None: availability, state, stats or discovery (not re-sent from here)


class MqttSink:
    """Publishes to ``{prefix}/{device_id}/…``; see the module docstring for the delivery rules."""

    name = "mqtt"
    on_closed = None  # a broker that goes away comes back: the outbox keeps the events meanwhile

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
        self._window = max(1, min(SEND_WINDOW, settings.queue_size))

        self._cond = threading.Condition(threading.Lock())  # guards everything below; never held during I/O
        self._pending: deque[_Event] = deque()  # not handed to paho yet, oldest first
        self._inflight: dict[int, _InFlight] = {}  # paho mid -> what it carries
        self._early_acks: set[int] = set()  # acks that beat the registration of their mid
        self._unstored: list[_Event] = []  # to write to the journal
        self._to_forget: list[int] = []  # keys to delete from the journal (acked or dropped)
        self._latest: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, version)
        self._latest_sent: dict[str, int] = {}
        self._next_key = 1
        self._epoch = 0  # bumped on each connect; a publish that straddles one is re-sent
        self._connected = False
        self._announce = False  # discovery/state/stats/online due after a connect
        self._ha_announce = False
        self._ha_cleared = False
        self._stopping = False
        self._dropped = 0
        self._dropped_logged = 0  # dropped_events as the log last reported it
        self._drop_logged_at = 0.0
        self._drops_due = False  # report drops now (the outage ended), not at the next interval
        self._ha_logged_at: float | None = None
        self._ha_ignored = 0
        self._ha_ignored_logged_at: float | None = None
        self._delivered = 0
        self._connects = 0
        self._failures = 0
        self._last_error: str | None = None
        self._problem: str | None = None
        self._attempt_answered = True
        self._socket_errors = _SocketErrors()
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
        client.max_inflight_messages_set(self._window + len(self.labels) + 16)
        client.on_pre_connect = self._guard(self._on_pre_connect)
        client.on_connect = self._guard(self._on_connect)
        client.on_connect_fail = self._guard(self._on_connect_fail)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_publish = self._guard(self._on_publish)
        client.on_log = self._guard(self._socket_errors.on_log)
        if self.settings.homeassistant:
            client.message_callback_add(homeassistant.status_topic(self.settings.discovery_prefix), self._guard(self._on_ha_status))
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
        with self._cond:
            if message.topic == EVENTS or not (message.retain or message.topic in LATEST_VALUE_TOPICS):
                qos = self.settings.qos if message.topic == EVENTS else message.qos
                event = _Event(self._next_key, message.topic, payload, qos)
                self._next_key += 1
                self._pending.append(event)
                if self._journal is not None:
                    self._unstored.append(event)
                self._enforce_bound()
            else:
                _, version = self._latest.get(message.topic, (b"", 0))
                self._latest[message.topic] = (payload, version + 1)
            self._cond.notify_all()

    def status(self) -> Mapping[str, Any]:
        """connected, broker ("host:port"), queued (events not acknowledged yet), delivered (events
        acknowledged), dropped_events, reconnects, failed_attempts, last_error (the latest connection
        problem as a sentence, kept after recovery; None if there was none),
        persist, persist_error."""
        with self._cond:
            queued = len(self._pending) + sum(1 for f in self._inflight.values() if f.event is not None)
            return {
                "connected": self._connected,
                "broker": self.broker,
                "queued": queued,
                "delivered": self._delivered,
                "dropped_events": self._dropped,
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
            while self._connected and self._undelivered() and time.monotonic() < deadline:
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
                while offline_mid is not None and offline_mid in self._inflight and self._connected:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(0.1, left))
        client.disconnect()
        client.loop_stop()
        self._flush_journal()
        with self._cond:
            left = self._events_left()
        if left:
            kept = f"kept in {self._journal.path} for the next start" if self._journal else "lost (enable mqtt.persist to keep them)"
            log.warning("MQTT: %d events not acknowledged by %s at stop; %s", left, self.broker, kept)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._client = None

    # -- helpers -------------------------------------------------------------------------------

    def _topic(self, topic: str) -> str:
        return device_topic(self.settings.prefix, self.device_id, topic)

    def _guard(self, fn: Any) -> Any:
        """Paho callbacks run on its network thread; an exception there would kill it."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("MQTT: internal error in %s", fn.__name__)
                return None

        wrapper.__name__ = fn.__name__
        return wrapper

    def _events_left(self) -> int:
        return len(self._pending) + sum(1 for f in self._inflight.values() if f.event is not None)

    def _undelivered(self) -> bool:
        # Called with the lock held: events unacknowledged, or a state/stats value not sent yet.
        return bool(self._events_left()) or any(self._latest_sent.get(t) != v for t, (_, v) in self._latest.items())

    def _enforce_bound(self) -> None:
        # Called with the lock held.
        while self._events_left() > self.settings.queue_size:
            oldest_flight = min(
                ((mid, f.event) for mid, f in self._inflight.items() if f.event is not None),
                key=lambda item: item[1].key,  # type: ignore[union-attr]
                default=None,
            )
            if oldest_flight is not None and (not self._pending or oldest_flight[1].key < self._pending[0].key):  # type: ignore[union-attr]
                # Already with paho: forget it here; paho may still deliver it, which is harmless.
                mid, dropped = oldest_flight
                del self._inflight[mid]
            else:
                dropped = self._pending.popleft()
            self._dropped += 1
            if self._journal is not None:
                self._to_forget.append(dropped.key)  # type: ignore[union-attr]

    def _requeue(self, events: list[_Event]) -> None:
        # Called with the lock held: back into the pending queue in delivery (key) order.
        if events:
            self._pending = deque(sorted([*events, *self._pending], key=lambda e: e.key))

    def _open_journal(self) -> None:
        path = journal_file(self.settings)
        try:
            journal = EventJournal(path)
            stored = journal.load()
        except (sqlite3.Error, OSError) as exc:  # a state_dir a person must fix
            raise ConfigError(
                f"mqtt.persist is on but the event queue {path} cannot be opened ({exc}); "
                "set mqtt.state_dir to a writable directory (systemd: StateDirectory=deepfer)"
            ) from None
        self._journal = journal
        if self._envelope is not None:
            for topic, seq in highest_seqs(stored).items():
                self._envelope.continue_after(topic, seq)
        with self._cond:
            # Events published before start() go after the stored ones, renumbered, and are stored too.
            early = list(self._pending)
            self._pending = deque(_Event(item.key, item.topic, item.payload, item.qos, stored=True) for item in stored)
            if stored:
                self._next_key = stored[-1].key + 1
            for event in early:
                event.key = self._next_key
                self._next_key += 1
                self._pending.append(event)
                self._unstored.append(event)
            self._enforce_bound()
        if stored:
            log.info("MQTT: %d undelivered events from the last run are queued (%s)", len(stored), path)

    def _flush_journal(self) -> None:
        if self._journal is None:
            return
        with self._cond:
            add, self._unstored = self._unstored, []
            forget, self._to_forget = self._to_forget, []
        try:
            self._journal.apply(
                add=[StoredEvent(e.key, e.topic, e.payload, e.qos) for e in add],
                remove=forget,
            )
        except (sqlite3.Error, OSError) as exc:  # disk full, card gone: keep delivering from memory
            with self._cond:
                # Not retried: these events go out from memory, and acked ones left on disk are
                # merely sent again after a restart (at-least-once).
                for e in add:
                    e.stored = True
            message = f"cannot write the event queue {self._journal.path} ({exc}); events are kept in memory only"
            if message != self._journal_error:
                log.warning("MQTT: %s", message)
            self._journal_error = message
            return
        self._journal_error = None
        for e in add:
            e.stored = True

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, event: _Event | None) -> int | None:
        """Hand one message to paho (never under our lock: paho calls on_publish holding its own)."""
        client = self._client
        assert client is not None
        with self._cond:
            epoch = self._epoch
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as exc:  # payload too large for MQTT, bad topic: it can never be sent
            log.error("MQTT: cannot publish to %s (%s); message dropped", topic, exc)
            with self._cond:
                if event is not None:
                    self._dropped += 1
                    if self._journal is not None:
                        self._to_forget.append(event.key)
            return None
        with self._cond:
            lost = info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN) or (
                info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0  # paho keeps no QoS 0 message without a connection
            )
            if lost or epoch != self._epoch:
                # A connect happened meanwhile (paho's copy may be dropped): send it again, in order.
                self._early_acks.discard(info.mid)
                if event is not None:
                    self._requeue([event])
                return None
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._acked(event)
                return info.mid
            self._inflight[info.mid] = _InFlight(event)
            return info.mid

    def _acked(self, event: _Event | None) -> None:
        # Called with the lock held.
        if event is None:
            return
        self._delivered += 1
        if self._journal is not None:
            self._to_forget.append(event.key)

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
        if self._stopping or self._unstored or self._to_forget:
            return True
        if not self._connected:
            return False
        if self._announce or self._ha_announce:
            return True
        if any(self._latest_sent.get(t) != v for t, (_, v) in self._latest.items()):
            return True
        return bool(self._pending) and self._flight_events() < self._window

    def _flight_events(self) -> int:
        return sum(1 for f in self._inflight.values() if f.event is not None)

    def _send_due(self) -> None:
        with self._cond:
            announce, self._announce = self._announce, False
            ha_announce, self._ha_announce = self._ha_announce, False
        if announce or ha_announce:
            self._send_discovery()
        if announce:
            # A broker that restarted without persistence forgot the retained values: send them again.
            with self._cond:
                self._latest_sent.clear()
        self._send_latest()
        if announce:
            self._send(self.availability_topic, ONLINE.encode(), qos=1, retain=True, event=None)
        while self._connected:
            with self._cond:
                if self._stopping or not self._pending or self._flight_events() >= self._window:
                    return
                event = self._pending[0]
                if self._journal is not None and not event.stored:
                    return  # store first, so that a crash after the send cannot lose it
                self._pending.popleft()
            self._send(self._topic(event.topic), event.payload, event.qos, retain=False, event=event)

    def _send_latest(self) -> None:
        with self._cond:
            due = [(t, p, v) for t, (p, v) in self._latest.items() if self._latest_sent.get(t) != v]
        for topic, payload, version in due:
            self._send(self._topic(topic), payload, qos=1, retain=True, event=None)
            with self._cond:
                self._latest_sent[topic] = version

    def _send_discovery(self) -> None:
        if self.settings.homeassistant:
            configs = homeassistant.discovery_configs(self.settings, self.device_id, self.labels)
            for topic, config in configs.items():
                self._send(topic, encode_payload(config), qos=1, retain=True, event=None)
        elif not self._ha_cleared:
            # Removes entities an earlier run with discovery on left behind in Home Assistant.
            for topic in homeassistant.removal_topics(self.settings, self.device_id, self.labels):
                self._send(topic, b"", qos=1, retain=True, event=None)
            self._ha_cleared = True

    def _log_drops(self, final: bool = False) -> None:
        """Report drops once per interval; when the outage ends and at stop, say the total the counter holds."""
        with self._cond:
            dropped = self._dropped
            due, self._drops_due = self._drops_due or final, False
        new = dropped - self._dropped_logged
        now = time.monotonic()
        if new > 0 and (self._dropped_logged == 0 or due or now - self._drop_logged_at >= _DROP_LOG_INTERVAL_S):
            log.warning(
                "MQTT: event queue full (mqtt.queue_size = %d) while %s is unreachable; dropped the %d oldest events "
                "(%d in all, as dropped_events in stats)",
                self.settings.queue_size, self.broker, new, dropped,
            )
            self._dropped_logged = dropped
            self._drop_logged_at = now

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
        self._socket_errors.last = None

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._attempt_answered = True
        if reason.is_failure:
            self._report_problem(describe_refusal(reason, self.settings))
            return
        # Paho would re-send its unacknowledged copies itself, ahead of or behind ours;
        # this sink re-sends from its own queue instead, in order.
        _drop_paho_store(client)
        if self.settings.homeassistant:
            client.subscribe(homeassistant.status_topic(self.settings.discovery_prefix), qos=1)
        with self._cond:
            self._epoch += 1
            self._early_acks.clear()
            back = [f.event for f in self._inflight.values() if f.event is not None]
            self._inflight.clear()
            self._requeue(back)
            self._connected = True
            self._connects += 1
            self._announce = True
            had_problem, self._problem = self._problem, None
            self._drops_due = True
            connects = self._connects
            queued = self._events_left()
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

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            was_connected, self._connected = self._connected, False
            stopping = self._stopping
            self._cond.notify_all()
        if stopping:
            return
        if not self._attempt_answered:
            self._attempt_answered = True
            name = reason.getName() if hasattr(reason, "getName") else str(reason)
            if name == "Keep alive timeout":  # paho gave up waiting: the broker never closed anything
                self._report_problem(describe_no_answer(self.settings, self.settings.keepalive_s))
            elif self._socket_errors.last:
                self._report_problem(describe_receive_error(self._socket_errors.last, self.settings))
            else:
                self._report_problem(describe_early_close(self.settings))
        elif was_connected:
            name = reason.getName() if hasattr(reason, "getName") else str(reason)
            # MQTT 3.1.1 carries no reason for a dropped connection; paho then says "Unspecified error".
            why = "" if name in ("Unspecified error", "Success") else f" ({name})"
            self._report_problem(f"lost the connection to MQTT broker {self.broker}{why}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            flight = self._inflight.pop(mid, None)
            if flight is None:
                if len(self._early_acks) > 10 * SEND_WINDOW:
                    self._early_acks.clear()  # acks of messages forgotten on overflow; never registered
                self._early_acks.add(mid)
            else:
                self._acked(flight.event)
            self._cond.notify_all()

    def _on_ha_status(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Anyone allowed to publish there can send anything, as often as they like: neither
        # the payload's size nor its rate may reach memory or the log unbounded.
        now = time.monotonic()
        if len(message.payload) > HA_STATUS_MAX_BYTES:
            self._ha_ignored += 1
            if self._ha_ignored_logged_at is None or now - self._ha_ignored_logged_at >= _HA_LOG_INTERVAL_S:
                log.warning(
                    "MQTT: ignored a %d-byte message on %s (Home Assistant sends 'online'; %d ignored so far)",
                    len(message.payload), message.topic, self._ha_ignored,
                )
                self._ha_ignored_logged_at = now
            return
        if message.payload.strip().lower() == ONLINE.encode():
            if self._ha_logged_at is None or now - self._ha_logged_at >= _HA_LOG_INTERVAL_S:
                log.info("MQTT: Home Assistant came online; announcing the device again")
                self._ha_logged_at = now
            else:
                log.debug("MQTT: Home Assistant came online again; announcing the device again")
            with self._cond:
                self._ha_announce = True
                self._cond.notify_all()
