"""StdoutSink: JSON lines, a slow reader never blocks publish(), a closed pipe is handled quietly; create_sinks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.messages import Envelope
from edge.protocols import Message
from edge.settings import EdgeSettings
from edge.sinks import create_sinks
from edge.sinks.mqtt import MqttSink
from edge.sinks.stdout_sink import StdoutSink

REPO = Path(__file__).resolve().parents[2]


def test_each_message_is_one_json_line_with_topic_and_payload() -> None:
    out = io.StringIO()
    sink = StdoutSink(stream=out)
    sink.start()
    envelope = Envelope("dev")
    event = envelope.message("events", {"emotion": "happy", "score": np.float32(0.75), "box": np.array([1, 2, 3, 4])})
    state = envelope.message("state", {"faces": np.int64(1), "dominant": None})
    sink.publish(event)
    sink.publish(state)
    sink.publish(Message(topic="availability", payload="online", retain=True))
    sink.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["topic"] == "events" and first["payload"]["seq"] == 1 and first["payload"]["device_id"] == "dev"
    assert first["payload"]["score"] == pytest.approx(0.75) and first["payload"]["box"] == [1, 2, 3, 4]
    assert second == {"topic": "state", "payload": {**state.payload, "faces": 1}}
    assert third == {"topic": "availability", "payload": "online"}
    assert sink.status()["written"] == 3


class GatedStream(io.StringIO):
    """A stdout whose reader stalls until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait(30)
        return super().write(s)


def test_a_stalled_reader_never_blocks_publish_and_drops_are_counted() -> None:
    out = GatedStream()
    sink = StdoutSink(stream=out, queue_size=10)
    sink.start()
    sink.publish(Message("events", {"n": 0}))
    assert out.entered.wait(10)  # the writer thread now hangs in write() with message 0
    for n in range(1, 51):
        sink.publish(Message("events", {"n": n}))
    assert sink.status()["dropped"] == 40  # 10 fit the queue; the other 40 are dropped
    out.release.set()
    sink.stop()
    assert [json.loads(line)["payload"]["n"] for line in out.getvalue().splitlines()] == list(range(11))


PIPE_SCRIPT = """
import sys, threading, time
from edge.protocols import Message
from edge.sinks.stdout_sink import StdoutSink

hook = threading.Event()
sink = StdoutSink(on_closed=hook.set)
sink.start()
for n in range(100000):
    sink.publish(Message("events", {"n": n, "pad": "x" * 200}))
    if sink.status()["closed"]:
        break
    time.sleep(0.001)
sink.stop()
print(f"closed={sink.status()['closed']} hook={hook.is_set()}", file=sys.stderr)
"""


def test_a_reader_that_goes_away_ends_writing_quietly(tmp_path: Path) -> None:
    script = tmp_path / "pipe.py"
    script.write_text(PIPE_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # like `| head -n 1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert json.loads(first)["payload"]["n"] == 0
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "closed=True hook=True" in err


def test_create_sinks_builds_the_enabled_ones() -> None:
    assert create_sinks(EdgeSettings(device_id="dev")) == []
    sinks = create_sinks(EdgeSettings(device_id="dev", stdout={"enabled": True}, mqtt={"enabled": True, "host": "127.0.0.1"}))
    assert [type(s) for s in sinks] == [StdoutSink, MqttSink]
    assert sinks[1].availability_topic == "deepfer/dev/availability"
