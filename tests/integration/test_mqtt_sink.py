"""MqttSink against a real Mosquitto: availability, ordering, outages, persistence, auth, TLS, HA discovery."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import Broker, Subscriber, TlsFiles, make_password_file, mosquitto_passwd_binary, read_retained

from edge.messages import Envelope
from edge.protocols import Message
from edge.settings import ConfigError, MqttSettings
from edge.sinks.mqtt import EventJournal, MqttSink, check_broker, journal_file, sequence_file

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

DEVICE = "dev"
REPO = Path(__file__).resolve().parents[2]
EVENTS = f"deepfer/{DEVICE}/events"
STATE = f"deepfer/{DEVICE}/state"
STATS = f"deepfer/{DEVICE}/stats"
AVAILABILITY = f"deepfer/{DEVICE}/availability"


def wait_until(condition: Callable[[], object], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds; a deadline for things that must happen, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def seqs(sub: Subscriber, topic: str = EVENTS) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in sub.on(topic)]


def first_occurrences(values: list[int]) -> list[int]:
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def publish_events(sink: MqttSink, envelope: Envelope, n: int) -> None:
    for i in range(n):
        sink.publish(envelope.message("events", {"track": i % 3, "emotion": "happy"}))


@pytest.fixture
def make_sink() -> Iterator[Callable[..., MqttSink]]:
    sinks: list[MqttSink] = []

    def make(settings: MqttSettings, envelope: Envelope | None = None, start: bool = True) -> MqttSink:
        sink = MqttSink(settings, DEVICE, envelope)
        sinks.append(sink)
        if start:
            sink.start()
        return sink

    yield make
    for sink in sinks:
        sink.stop(timeout=1.0)


@pytest.fixture
def persistent_setup(broker_factory: Callable[..., Broker]) -> Iterator[tuple[Broker, Subscriber]]:
    """A broker that keeps sessions across restarts and a subscriber whose QoS 1 messages it queues meanwhile."""
    b = broker_factory(persistence=True)
    sub = Subscriber(b, [f"deepfer/{DEVICE}/#"], persistent=True)
    yield b, sub
    sub.close()


# A daemon-like process for the kill -9 tests: it prints "ready" once in the wanted state, then idles.
DAEMON = """
import json, sqlite3, sys, time
from edge.messages import Envelope
from edge.settings import MqttSettings
from edge.sinks.mqtt import MqttSink, journal_file, sequence_file

settings = MqttSettings(**json.loads(sys.argv[1]))
mode, n = sys.argv[2], int(sys.argv[3])
envelope = Envelope("dev", state_file=sequence_file(settings))
sink = MqttSink(settings, "dev", envelope)
sink.start()
for i in range(n):
    sink.publish(envelope.message("events", {"i": i}))

def stored():
    try:
        with sqlite3.connect(journal_file(settings)) as db:
            return db.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.Error:
        return -1

deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if (mode == "connected" and sink.status()["connected"]) or (mode == "stored" and stored() == n):
        print("ready", flush=True)
        break
    time.sleep(0.02)
time.sleep(300)
"""


def spawn_daemon(tmp_path: Path, settings: MqttSettings, mode: str, n: int = 0) -> subprocess.Popen[str]:
    script = tmp_path / "sink_daemon.py"
    script.write_text(DAEMON)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), settings.model_dump_json(), mode, str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"daemon subprocess never got ready: {line!r}\n{err}")
    return proc


# --- availability -------------------------------------------------------------------------------


def test_availability_is_retained_online_then_offline_on_stop(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    sink = make_sink(broker.settings())
    assert wait_until(lambda: read_retained(broker, AVAILABILITY).get(AVAILABILITY) == b"online")
    assert sink.status()["connected"] is True
    sink.stop(timeout=2.0)
    assert read_retained(broker, AVAILABILITY) == {AVAILABILITY: b"offline"}


def test_last_will_marks_a_killed_daemon_offline(broker: Broker, tmp_path: Path) -> None:
    proc = spawn_daemon(tmp_path, broker.settings(), "connected")
    try:
        assert wait_until(lambda: read_retained(broker, AVAILABILITY).get(AVAILABILITY) == b"online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The broker sends the will when it sees the dead client's socket close.
        assert wait_until(lambda: read_retained(broker, AVAILABILITY).get(AVAILABILITY) == b"offline")
    finally:
        proc.kill()
        proc.communicate(timeout=10)


# --- events ------------------------------------------------------------------------------------


def test_events_arrive_in_order_at_qos1_with_rising_seq(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    sub = Subscriber(broker, [EVENTS])
    sink = make_sink(broker.settings())
    publish_events(sink, Envelope(DEVICE), 200)
    assert sub.wait_for(lambda ms: len(ms) >= 200), f"got {len(sub.messages)} of 200"
    assert seqs(sub) == list(range(1, 201))
    assert {(m.qos, m.retain) for m in sub.messages} == {(1, False)}
    body = json.loads(sub.messages[0].payload)
    assert body["device_id"] == DEVICE and body["v"] == 1 and body["emotion"] == "happy"
    assert wait_until(lambda: sink.status()["delivered"] == 200)
    assert sink.status()["queued"] == 0
    sub.close()


def test_broker_outage_mid_stream_loses_no_event(persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink]) -> None:
    broker, sub = persistent_setup
    sink = make_sink(broker.settings())
    envelope = Envelope(DEVICE)
    assert wait_until(lambda: sink.status()["connected"])
    publish_events(sink, envelope, 100)
    broker.stop()  # while those 100 are still being sent: some are in flight, some not handed over yet
    publish_events(sink, envelope, 100)
    assert wait_until(lambda: not sink.status()["connected"])
    assert sink.status()["queued"] >= 100  # the second hundred cannot have been acknowledged
    broker.start()
    publish_events(sink, envelope, 50)

    assert sub.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == EVENTS}) >= 250, timeout=30), (
        f"missing: {sorted(set(range(1, 251)) - set(seqs(sub)))}"
    )
    got = seqs(sub)
    assert set(got) == set(range(1, 251))
    assert first_occurrences(got) == list(range(1, 251))  # never reordered
    duplicates = len(got) - 250  # at-least-once: a re-sent unacknowledged event may arrive twice
    print(f"outage mid-stream: 250 events, {duplicates} duplicates")
    assert wait_until(lambda: sink.status()["queued"] == 0)
    assert sink.status()["dropped_events"] == 0
    assert sink.status()["reconnects"] >= 1


def test_full_queue_drops_the_oldest_events_and_counts_them(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    broker, sub = persistent_setup
    broker.stop()
    sink = make_sink(broker.settings(queue_size=5))
    publish_events(sink, Envelope(DEVICE), 20)
    status = sink.status()
    assert (status["queued"], status["dropped_events"]) == (5, 15)
    assert wait_until(lambda: any("queue full" in r.getMessage() and "15" in r.getMessage() for r in caplog.records))
    broker.start()
    assert wait_until(lambda: sink.status()["delivered"] == 5, timeout=30)
    assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == EVENTS]) >= 5)
    assert seqs(sub) == [16, 17, 18, 19, 20]


def test_persisted_queue_survives_a_sink_restart_during_an_outage(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], tmp_path: Path
) -> None:
    broker, sub = persistent_setup
    broker.stop()
    settings = broker.settings(persist=True, state_dir=tmp_path / "state")
    first = make_sink(settings, Envelope(DEVICE, state_file=sequence_file(settings)))
    publish_events(first, Envelope(DEVICE, state_file=sequence_file(settings)), 30)
    first.stop(timeout=0.5)
    assert EventJournal(journal_file(settings)).count() == 30

    envelope = Envelope(DEVICE, state_file=sequence_file(settings))  # seq continues at 31
    second = make_sink(settings, envelope)
    assert second.status()["queued"] == 30
    publish_events(second, envelope, 5)
    broker.start()
    assert sub.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == EVENTS}) >= 35, timeout=30)
    assert first_occurrences(seqs(sub)) == list(range(1, 36))
    assert wait_until(lambda: second.status()["queued"] == 0)
    second.stop(timeout=2.0)
    assert EventJournal(journal_file(settings)).count() == 0


def test_persisted_queue_survives_kill_9(persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], tmp_path: Path) -> None:
    broker, sub = persistent_setup
    broker.stop()
    settings = broker.settings(persist=True, state_dir=tmp_path / "state")
    proc = spawn_daemon(tmp_path, settings, "stored", 25)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)

    sink = make_sink(settings, Envelope(DEVICE, state_file=sequence_file(settings)))
    assert sink.status()["queued"] == 25
    broker.start()
    assert sub.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == EVENTS}) >= 25, timeout=30)
    assert first_occurrences(seqs(sub)) == list(range(1, 26))


def test_publish_returns_without_the_network_while_the_broker_is_down(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    broker.stop()
    sink = make_sink(broker.settings(queue_size=5000))
    publish_events(sink, Envelope(DEVICE), 1000)
    status = sink.status()
    assert (status["connected"], status["queued"], status["delivered"]) == (False, 1000, 0)
    broker.start()
    assert wait_until(lambda: sink.status()["delivered"] == 1000, timeout=30)


def test_publish_returns_while_the_broker_never_answers(make_sink: Callable[..., MqttSink]) -> None:
    # A socket that listens but never accepts: TCP connects, the MQTT login never gets an answer.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)
        settings = MqttSettings(host="127.0.0.1", port=hole.getsockname()[1], reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5)
        sink = make_sink(settings)
        publish_events(sink, Envelope(DEVICE), 1000)
        assert (sink.status()["connected"], sink.status()["queued"]) == (False, 1000)


# --- state and stats ---------------------------------------------------------------------------


def test_latest_state_and_stats_are_republished_before_online_after_reconnect(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink]
) -> None:
    broker, sub = persistent_setup
    envelope = Envelope(DEVICE)
    sink = make_sink(broker.settings())
    sink.publish(envelope.message("state", {"faces": 1, "dominant": "sad"}))
    assert sub.wait_for(lambda ms: {STATE, AVAILABILITY} <= {m.topic for m in ms})
    broker.stop()
    assert wait_until(lambda: not sink.status()["connected"])
    for dominant in ("happy", "fear", "neutral"):  # only the last may go out
        sink.publish(envelope.message("state", {"faces": 1, "dominant": dominant}))
    sink.publish(envelope.message("stats", {"fps": {"in": 15.0, "processed": 14.0, "dropped": 1.0}}))
    before = len(sub.messages)
    broker.start()
    assert sub.wait_for(lambda ms: any(m.topic == AVAILABILITY and m.payload == b"online" and not m.dup for m in ms[before:]), timeout=30)
    # A persistent broker re-delivers (dup) what it had in flight before its restart; skip those.
    after = [m for m in sub.messages[before:] if m.topic in (STATE, STATS, AVAILABILITY) and not m.dup]
    order = [(m.topic, json.loads(m.payload).get("dominant") if m.topic == STATE else m.payload if m.topic == AVAILABILITY else None) for m in after]
    online_at = len(order) - 1 - order[::-1].index((AVAILABILITY, b"online"))
    assert (STATE, "neutral") in order[:online_at] and (STATS, None) in order[:online_at], order
    assert all(dominant not in ("happy", "fear") for topic, dominant in order if topic == STATE), order
    retained = read_retained(broker, f"deepfer/{DEVICE}/+")
    assert json.loads(retained[STATE])["dominant"] == "neutral"


def test_retained_state_is_restored_on_a_broker_that_forgot_it(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    envelope = Envelope(DEVICE)
    sink = make_sink(broker.settings())
    state = envelope.message("state", {"faces": 2, "dominant": "happy"})
    sink.publish(state)
    sink.publish(envelope.message("stats", {"fps": {"processed": 9.5}}))
    assert wait_until(lambda: STATE in read_retained(broker, STATE))
    broker.restart()  # no persistence: the retained messages are gone
    assert wait_until(lambda: set(read_retained(broker, f"deepfer/{DEVICE}/+")) == {STATE, STATS, AVAILABILITY}, timeout=30)
    assert json.loads(read_retained(broker, STATE)[STATE]) == state.payload


# --- authentication and TLS ----------------------------------------------------------------------


@pytest.mark.skipif(mosquitto_passwd_binary() is None, reason="mosquitto_passwd not found (apt-get install mosquitto)")
def test_password_login_works_and_a_wrong_password_is_reported_once(
    broker_factory: Callable[..., Broker], make_sink: Callable[..., MqttSink], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge")
    broker = broker_factory(password_file=make_password_file(tmp_path / "passwd", {"edge": "s3cret-pw"}))
    (tmp_path / "pw").write_text("s3cret-pw\n")
    good = broker.settings(username="edge", password_file=tmp_path / "pw")
    make_sink(good)
    assert wait_until(lambda: read_retained(broker, AVAILABILITY, username="edge", password="s3cret-pw").get(AVAILABILITY) == b"online")
    assert check_broker(good, timeout=5) is None

    bad = broker.settings(username="edge", password="wrong-pw-123", client_id="deepfer-bad")
    sink = make_sink(bad)
    assert wait_until(lambda: sink.status()["failed_attempts"] >= 3)
    status = sink.status()
    assert status["connected"] is False
    assert "rejected" in status["last_error"] and "mqtt.password" in status["last_error"]
    assert f"{broker.host}:{broker.port}" in status["last_error"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "rejected" in r.getMessage()]
    assert len(warnings) == 1  # one warning per change of problem, not one per retry
    assert not any("wrong-pw-123" in r.getMessage() or "s3cret-pw" in r.getMessage() for r in caplog.records)
    assert "rejected" in (check_broker(bad, timeout=5) or "")


def test_tls_with_the_right_ca_works_and_an_untrusted_ca_is_reported(
    broker_factory: Callable[..., Broker], make_sink: Callable[..., MqttSink], tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    broker = broker_factory(tls=tls_files)
    sub = Subscriber(broker, [EVENTS])
    sink = make_sink(broker.settings(ca_file=tls_files.ca))
    publish_events(sink, Envelope(DEVICE), 3)
    assert sub.wait_for(lambda ms: len(ms) >= 3)
    assert seqs(sub) == [1, 2, 3]
    sub.close()

    untrusted = broker.settings(ca_file=tls_files.other_ca, client_id="deepfer-untrusted")
    bad = make_sink(untrusted)
    assert wait_until(lambda: bad.status()["failed_attempts"] >= 2)
    error = bad.status()["last_error"]
    assert "not trusted" in error and "mqtt.ca_file" in error and f"{broker.host}:{broker.port}" in error
    assert len([r for r in caplog.records if "not trusted" in r.getMessage()]) == 1
    assert "not trusted" in (check_broker(untrusted, timeout=5) or "")
    plain = check_broker(broker.settings(tls=False, ca_file=None), timeout=5) or ""
    assert "mqtt.tls" in plain


def test_check_broker_names_an_unreachable_broker(broker: Broker) -> None:
    assert check_broker(broker.settings(), timeout=5) is None
    broker.stop()
    message = check_broker(broker.settings(), timeout=5) or ""
    assert "refused" in message and f"{broker.host}:{broker.port}" in message


# --- Home Assistant discovery ------------------------------------------------------------------


def ha_configs(broker: Broker) -> dict[str, bytes]:
    return {t: p for t, p in read_retained(broker, f"homeassistant/sensor/{DEVICE}/+/config").items() if p}


def test_homeassistant_discovery_configs_are_retained(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    make_sink(broker.settings(homeassistant=True))
    assert wait_until(lambda: len(ha_configs(broker)) == 10)
    configs = {t.split("/")[3]: json.loads(p) for t, p in ha_configs(broker).items()}
    assert configs["dominant_emotion"]["state_topic"] == STATE and "dominant" in configs["dominant_emotion"]["value_template"]
    assert configs["fps_processed"]["state_topic"] == STATS and "fps.processed" in configs["fps_processed"]["value_template"]
    assert configs["share_happy"]["unit_of_measurement"] == "%"
    for config in configs.values():
        assert config["availability_topic"] == AVAILABILITY
        assert config["device"]["identifiers"] == [f"deepfer_{DEVICE}"]


def test_homeassistant_configs_are_resent_when_home_assistant_comes_online(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    make_sink(broker.settings(homeassistant=True))
    faces = f"homeassistant/sensor/{DEVICE}/faces/config"
    assert wait_until(lambda: faces in ha_configs(broker))
    broker.publish(faces, b"", retain=True)  # as if HA's store had lost it
    assert faces not in ha_configs(broker)
    broker.publish("homeassistant/status", "online")
    assert wait_until(lambda: faces in ha_configs(broker))


def test_homeassistant_off_removes_configs_left_by_an_earlier_run(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    faces = f"homeassistant/sensor/{DEVICE}/faces/config"
    broker.publish(faces, json.dumps({"name": "old"}), retain=True)
    assert faces in ha_configs(broker)
    sub = Subscriber(broker, ["homeassistant/#"])
    sink = make_sink(broker.settings())
    assert sub.wait_for(lambda ms: any(m.topic == faces and m.payload == b"" for m in ms))
    assert faces not in ha_configs(broker)
    assert sink.status()["connected"]
    sub.close()


# --- settings problems ---------------------------------------------------------------------------


def test_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    sink = MqttSink(MqttSettings(username="u", password_file=tmp_path / "nope"), DEVICE)
    with pytest.raises(ConfigError, match=re.escape("mqtt.password_file")):
        sink.start()


def test_unusable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    sink = MqttSink(MqttSettings(persist=True, state_dir=tmp_path / "file" / "state"), DEVICE)
    with pytest.raises(ConfigError, match=re.escape("mqtt.state_dir")):
        sink.start()


def test_corrupt_queue_file_is_moved_aside(broker: Broker, make_sink: Callable[..., MqttSink], tmp_path: Path) -> None:
    settings = broker.settings(persist=True, state_dir=tmp_path)
    journal_file(settings).write_bytes(b"this is not a database" * 100)
    sink = make_sink(settings)
    publish_events(sink, Envelope(DEVICE), 2)
    assert wait_until(lambda: sink.status()["delivered"] == 2)
    assert list(tmp_path.glob("mqtt-events.sqlite3.corrupt-*"))


def test_sequence_file_only_with_persist(tmp_path: Path) -> None:
    assert sequence_file(MqttSettings(persist=False, state_dir=tmp_path)) is None
    assert sequence_file(MqttSettings(persist=True, state_dir=tmp_path)) == tmp_path / "sequence.json"


def test_non_event_messages_without_retain_are_queued_like_events(broker: Broker, make_sink: Callable[..., MqttSink]) -> None:
    sub = Subscriber(broker, [f"deepfer/{DEVICE}/alerts"])
    sink = make_sink(broker.settings())
    sink.publish(Message(topic="alerts", payload={"text": "camera lost"}, qos=1))
    assert sub.wait_for(lambda ms: len(ms) == 1)
    assert json.loads(sub.messages[0].payload) == {"text": "camera lost"}
    sub.close()


def test_journal_rows_match_what_is_queued(tmp_path: Path) -> None:
    # The on-disk queue on its own: atomic add+remove, order by key.
    journal = EventJournal(tmp_path / "q.sqlite3")
    from edge.sinks.mqtt.journal import StoredEvent

    journal.apply(add=[StoredEvent(k, "events", f"{k}".encode(), 1) for k in (3, 1, 2)])
    journal.apply(remove=[2, 99])
    assert [(e.key, e.payload) for e in journal.load()] == [(1, b"1"), (3, b"3")]
    journal.close()
    with sqlite3.connect(tmp_path / "q.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_events_published_before_start_go_after_the_stored_ones(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], tmp_path: Path
) -> None:
    broker, sub = persistent_setup
    broker.stop()
    settings = broker.settings(persist=True, state_dir=tmp_path / "state")
    envelope = Envelope(DEVICE, state_file=sequence_file(settings))
    first = make_sink(settings, envelope)
    publish_events(first, envelope, 3)
    first.stop(timeout=0.2)
    second = make_sink(settings, envelope, start=False)
    publish_events(second, envelope, 2)  # seq 4, 5: queued before start() opened the stored 1..3
    second.start()
    assert second.status()["queued"] == 5
    broker.start()
    assert sub.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == EVENTS}) >= 5, timeout=30)
    assert first_occurrences(seqs(sub)) == [1, 2, 3, 4, 5]


def test_an_outage_logs_one_warning_per_change_not_per_retry(
    broker: Broker, make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge.sinks")
    sink = make_sink(broker.settings())
    assert wait_until(lambda: sink.status()["connected"])
    broker.stop()
    assert wait_until(lambda: sink.status()["failed_attempts"] >= 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # "lost the connection", then "refused the connection" — and nothing for the retries after it.
    assert len(warnings) == 2, warnings
    assert "lost the connection" in warnings[0] and "refused the connection" in warnings[1]
    assert all(f"{broker.host}:{broker.port}" in w for w in warnings)
    assert not any(r.exc_info for r in caplog.records)
    broker.start()
    assert wait_until(lambda: sink.status()["connected"])
    assert sink.status()["last_error"] is not None and sink.status()["reconnects"] == 1


# --- seq integrity and damaged queue files (issue 13, items 3 and 4) ------------------------------


def queue_events_during_an_outage(settings: MqttSettings, n: int) -> dict[int, bytes]:
    """Run a sink that queues ``n`` events on disk while the broker is down; seq -> stored payload."""
    envelope = Envelope(DEVICE, state_file=sequence_file(settings))
    sink = MqttSink(settings, DEVICE, envelope)
    sink.start()
    messages = [envelope.message("events", {"track": i % 3, "emotion": "happy", "i": i}) for i in range(n)]
    for message in messages:
        sink.publish(message)
    sink.stop(timeout=0.5)
    path = journal_file(settings)
    journal = EventJournal(path)
    assert journal.count() == n
    journal.close()
    assert not path.with_name(path.name + "-wal").exists()  # all of it is in the main file now
    from edge.sinks.wire import encode_payload

    return {m.payload["seq"]: encode_payload(m.payload) for m in messages}


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_seq_continues_after_the_queued_events_when_the_sequence_file_is_lost(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], tmp_path: Path, damage: str
) -> None:
    broker, sub = persistent_setup
    broker.stop()
    settings = broker.settings(persist=True, state_dir=tmp_path / "state")
    queue_events_during_an_outage(settings, 80)
    if damage == "missing":
        sequence_file(settings).unlink()
    else:
        sequence_file(settings).write_bytes(b"\x00" * 40)
    envelope = Envelope(DEVICE, state_file=sequence_file(settings))
    sink = make_sink(settings, envelope)
    publish_events(sink, envelope, 5)
    broker.start()
    assert sub.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == EVENTS}) >= 85, timeout=30)
    # A subscriber that de-duplicates on seq (as the README advises) keeps all 85 real events.
    assert first_occurrences(seqs(sub)) == list(range(1, 86))
    assert json.loads(sequence_file(settings).read_text())["events"] == 85


def compact(path: Path) -> None:
    """Rewrite the queue file from scratch (VACUUM INTO a new file): its last page is one of events."""
    fresh = path.with_name("fresh.sqlite3")
    db = sqlite3.connect(path)
    db.execute("VACUUM INTO ?", (str(fresh),))
    db.close()
    fresh.replace(path)


def readable_one_by_one(path: Path, keys: list[int]) -> dict[int, bytes]:
    """key -> payload for each row that a direct lookup of its own key still reads intact."""
    copy = path.with_name("probe.sqlite3")
    copy.write_bytes(path.read_bytes())
    db = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    out = {}
    for key in keys:
        try:
            row = db.execute("SELECT payload FROM events WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            out[key] = bytes(row[0])
    db.close()
    copy.unlink()
    return out


def test_a_damaged_queue_page_loses_only_the_events_on_it(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    broker, sub = persistent_setup
    broker.stop()
    settings = broker.settings(persist=True, state_dir=tmp_path / "state")
    payloads = queue_events_during_an_outage(settings, 80)  # queue keys are the seq numbers here
    path = journal_file(settings)
    compact(path)
    original = path.read_bytes()
    assert len(original) // 4096 >= 4  # page 0 holds the schema; the events span several pages
    for page in range(1, len(original) // 4096):  # the first page whose damage costs some events: a leaf
        data = bytearray(original)
        data[page * 4096:(page + 1) * 4096] = bytes(range(256)) * 16
        path.write_bytes(bytes(data))
        # Intact: what SQLite still reads when asked for each key on its own.
        intact = {k for k, p in readable_one_by_one(path, list(payloads)).items() if p == payloads[k]}
        if 40 <= len(intact) < 80:
            break
    else:
        pytest.fail("no page of the queue file holds only some of its events")

    sink = make_sink(settings, Envelope(DEVICE, state_file=sequence_file(settings)))
    assert sink.status()["queued"] == len(intact)
    assert any(f"recovered {len(intact)} events" in r.getMessage() for r in caplog.records)
    broker.start()
    assert sub.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == EVENTS}) >= len(intact), timeout=30)
    assert set(seqs(sub)) == intact
    assert {json.loads(m.payload)["seq"]: m.payload for m in sub.on(EVENTS)} == {s: payloads[s] for s in intact}
    assert list(path.parent.glob("mqtt-events.sqlite3.corrupt-*"))


def test_a_truncated_queue_file_never_publishes_a_corrupt_payload(
    persistent_setup: tuple[Broker, Subscriber], make_sink: Callable[..., MqttSink], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    broker, sub = persistent_setup
    broker.stop()
    settings = broker.settings(persist=True, state_dir=tmp_path / "state")
    payloads = queue_events_during_an_outage(settings, 80)
    path = journal_file(settings)
    compact(path)  # the file ends in a page of events, not in free space
    path.write_bytes(path.read_bytes()[:-100])

    sink = make_sink(settings, Envelope(DEVICE, state_file=sequence_file(settings)))
    queued = sink.status()["queued"]
    assert 0 < queued < 80
    assert any("damaged" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    broker.start()
    assert wait_until(lambda: sink.status()["delivered"] == queued, timeout=30)
    sink.publish(Message(topic="events", payload={"marker": True}, qos=1))  # sent after every stored one
    assert sub.wait_for(lambda ms: any(b"marker" in m.payload for m in ms), timeout=30)
    stored = [m.payload for m in sub.on(EVENTS) if b"marker" not in m.payload]
    assert stored and set(stored) <= set(payloads.values())  # each one exactly as it was queued, no NUL-filled ones


def test_a_zero_byte_queue_file_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    path = tmp_path / "mqtt-events.sqlite3"
    path.write_bytes(b"")
    journal = EventJournal(path)
    assert journal.load() == []
    journal.close()
    assert any("0-byte" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    caplog.clear()
    EventJournal(path).close()  # a queue that was written once is not empty any more
    assert not any("0-byte" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damaged", [[(100, 180), (1500, 1999)], [(1, 35)], [(1, 35), (60, 61)], [(1990, 2000)]])
def test_salvage_steps_around_every_damaged_range(damaged: list[tuple[int, int]]) -> None:
    from edge.sinks.mqtt.journal import salvage_rows

    keys = [k for k in range(1, 2001) if k % 7]  # gaps, as acknowledged events leave them

    def probe(key: int):
        nxt = next((k for k in keys if k >= key), None)
        reach = key if nxt is None else nxt
        # A lookup past the last key still reads the last leaf.
        if any(lo <= reach <= hi for lo, hi in damaged) or (nxt is None and any(lo <= keys[-1] <= hi for lo, hi in damaged)):
            raise sqlite3.DatabaseError("database disk image is malformed")
        return None if nxt is None else (nxt, "events", b"{}", 1)

    got = [row[0] for row in salvage_rows(probe)]
    assert got == [k for k in keys if not any(lo <= k <= hi for lo, hi in damaged)]


# --- connection hints say what was observed (item 7) ---------------------------------------------


def first_problem(sink: MqttSink, caplog: pytest.LogCaptureFixture, timeout: float = 30.0) -> str:
    """The first "retrying" warning the sink logs. It is waited for itself: the sink counts the failed
    attempt before it logs, so a count seen on the test's thread does not mean the warning is written yet."""

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "retrying" in r.getMessage()]

    assert wait_until(warnings, timeout=timeout), f"no warning in {timeout} s; status {dict(sink.status())}"
    assert sink.status()["failed_attempts"] >= 1
    return warnings()[0]


def test_mutual_tls_works_and_a_rejected_client_certificate_is_named(
    broker_factory: Callable[..., Broker], make_sink: Callable[..., MqttSink], tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    broker = broker_factory(tls=tls_files, require_certificate=True)
    good = broker.settings(cert_file=tls_files.client_cert, key_file=tls_files.client_key)
    assert check_broker(good, timeout=5) is None
    sub = Subscriber(broker, [EVENTS])
    publish_events(make_sink(good), Envelope(DEVICE), 2)
    assert sub.wait_for(lambda ms: len(ms) >= 2)
    sub.close()

    stranger = broker.settings(cert_file=tls_files.stranger_cert, key_file=tls_files.stranger_key, client_id="deepfer-stranger")
    stranger_sink = make_sink(stranger)
    problem = first_problem(stranger_sink, caplog)
    for message in (problem, check_broker(stranger, timeout=5) or ""):
        assert "client certificate" in message and "mqtt.cert_file" in message, message
        assert "speaks TLS" not in message and "mqtt.tls" not in message, message
    stranger_sink.stop(timeout=1.0)  # so that what is logged next is the certificate-less sink's
    caplog.clear()
    without = broker.settings(client_id="deepfer-no-cert")
    problem = first_problem(make_sink(without), caplog)
    assert "requires a client certificate" in problem and "mqtt.cert_file" in problem, problem


def test_tls_to_a_plain_port_says_the_port_does_not_speak_tls(
    broker: Broker, make_sink: Callable[..., MqttSink], tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    settings = broker.settings(tls=True, ca_file=tls_files.ca)
    for message in (first_problem(make_sink(settings), caplog), check_broker(settings, timeout=5) or ""):
        assert "does not seem to speak TLS" in message and "mqtt.tls = false" in message and "mqtt.port" in message, message


def test_a_broker_that_never_answers_gets_no_tls_hint(make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    with socket.socket() as hole:  # TCP connects; nothing ever answers the MQTT login
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        settings = MqttSettings(host="127.0.0.1", port=hole.getsockname()[1], reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5)
        problem = first_problem(make_sink(settings), caplog)
        assert "did not answer the login within 5 s" in problem and "TLS" not in problem, problem
        message = check_broker(settings, timeout=2) or ""
        assert "did not answer the login" in message and "TLS" not in message, message


# --- drop counts (item 8) and homeassistant/status (item 9) ---------------------------------------


def drop_totals(caplog: pytest.LogCaptureFixture) -> list[int]:
    import re

    return [int(m.group(1)) for r in caplog.records if (m := re.search(r"\((\d+) in all", r.getMessage()))]


@pytest.mark.parametrize("outage_ends_by", ["reconnect", "stop"])
def test_the_drop_warning_agrees_with_the_counter(
    broker: Broker, make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture, outage_ends_by: str
) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    broker.stop()
    sink = make_sink(broker.settings(queue_size=5))
    envelope = Envelope(DEVICE)
    publish_events(sink, envelope, 6)
    assert wait_until(lambda: drop_totals(caplog) == [1])  # the first drop is reported at once
    publish_events(sink, envelope, 181)  # within the rate limit of that warning
    assert sink.status()["dropped_events"] == 182
    if outage_ends_by == "reconnect":
        broker.start()
        assert wait_until(lambda: sink.status()["delivered"] == 5, timeout=30)
        assert wait_until(lambda: drop_totals(caplog)[-1:] == [182])
    else:
        sink.stop(timeout=0.5)
        assert drop_totals(caplog)[-1] == 182


def test_homeassistant_status_ignores_oversized_payloads_and_rate_limits_its_log(
    broker: Broker, make_sink: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge")
    make_sink(broker.settings(homeassistant=True))
    faces = f"homeassistant/sensor/{DEVICE}/faces/config"
    assert wait_until(lambda: faces in ha_configs(broker))
    broker.publish(faces, b"", retain=True)
    # 2 MB that would read "online" once stripped: never copied, never taken for Home Assistant's birth message.
    broker.publish("homeassistant/status", b"online" + b" " * 2_000_000)
    assert wait_until(lambda: any("ignored a 2000006-byte message" in r.getMessage() for r in caplog.records))
    assert faces not in ha_configs(broker)
    for _ in range(20):
        broker.publish("homeassistant/status", "online")
    assert wait_until(lambda: sum("came online" in r.getMessage() for r in caplog.records) == 20)
    assert wait_until(lambda: faces in ha_configs(broker))
    infos = [r for r in caplog.records if "came online" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(infos) == 1
