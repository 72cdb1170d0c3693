"""``deepfer-edge watch``: a live terminal view of the devices on a broker.

Subscribes to ``{prefix}/+/availability|state|stats|events`` and redraws a small
table once a second: each device, whether it is online, faces in view, the
dominant emotion with its share, processed fps, and the last event.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from edge.settings import EdgeSettings
from edge.sinks import wire

log = logging.getLogger(__name__)


@dataclass
class DeviceView:
    device_id: str
    availability: str = "?"
    state: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    last_event: dict[str, Any] = field(default_factory=dict)
    lost: int = 0  # gaps seen in the events seq
    _last_seq: int = 0

    def on_event(self, payload: dict[str, Any]) -> None:
        seq = payload.get("seq")
        if isinstance(seq, int):
            if self._last_seq and seq > self._last_seq + 1:
                self.lost += seq - self._last_seq - 1
            self._last_seq = max(self._last_seq, seq)
        self.last_event = payload


class WatchModel:
    """Everything the view shows, fed by MQTT messages (kept apart from the network for tests)."""

    def __init__(self, prefix: str, only_device: str | None = None) -> None:
        self.prefix = prefix
        self.only_device = only_device
        self.devices: dict[str, DeviceView] = {}
        self.lock = threading.Lock()

    def feed(self, topic: str, raw: bytes | bytearray) -> None:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != self.prefix:
            return
        _, device, kind = parts
        if self.only_device and device != self.only_device:
            return
        with self.lock:
            view = self.devices.setdefault(device, DeviceView(device))
            if kind == wire.AVAILABILITY:
                view.availability = raw.decode(errors="replace")
                return
            try:
                payload = json.loads(raw)
            except ValueError:
                return
            if not isinstance(payload, dict):
                return
            if kind == wire.STATE:
                view.state = payload
            elif kind == wire.STATS:
                view.stats = payload
            elif kind == wire.EVENTS:
                view.on_event(payload)

    def render(self) -> str:
        lines = [f"{'device':<18} {'status':<8} {'faces':>5}  {'dominant':<16} {'fps':>6}  last event"]
        with self.lock:
            for d in sorted(self.devices.values(), key=lambda v: v.device_id):
                st = d.state
                dom = st.get("dominant") or "-"
                share = st.get("shares", {}).get(dom) if dom != "-" else None
                dom_text = f"{dom} {share:.0%}" if isinstance(share, (int, float)) else dom
                fps = d.stats.get("fps", {}).get("processed")
                ev = d.last_event
                if ev.get("type") == "emotion_changed":
                    ev_text = f"#{ev.get('track_id')} {ev.get('from')} -> {ev.get('to')}"
                elif ev:
                    ev_text = f"#{ev.get('track_id')} {ev.get('type')} {ev.get('emotion') or ev.get('dominant') or ''}"
                else:
                    ev_text = "-"
                if d.lost:
                    ev_text += f"  ({d.lost} events missed)"
                lines.append(
                    f"{d.device_id:<18} {d.availability:<8} {st.get('faces', '-')!s:>5}  {dom_text:<16} "
                    f"{(f'{fps:.1f}' if isinstance(fps, (int, float)) else '-'):>6}  {ev_text}"
                )
        if len(lines) == 1:
            lines.append(f"(no device has published under {self.prefix}/ yet)")
        return "\n".join(lines)


def watch(settings: EdgeSettings, device: str | None = None, duration: float = 0.0, out: TextIO = sys.stdout) -> int:
    from edge.sinks.mqtt import make_client

    model = WatchModel(settings.mqtt.prefix, device)
    client = make_client(settings.mqtt, client_id="")
    connected = threading.Event()

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if not reason.is_failure:
            c.subscribe(f"{settings.mqtt.prefix}/+/+", qos=1)
            connected.set()
        else:
            log.error("broker %s:%d refused the connection: %s", settings.mqtt.host, settings.mqtt.port, reason)

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: model.feed(msg.topic, msg.payload)
    client.connect_async(settings.mqtt.host, settings.mqtt.port, settings.mqtt.keepalive_s)
    client.loop_start()
    tty = out.isatty()
    end = time.monotonic() + duration if duration else float("inf")
    try:
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            screen = model.render()
            if not connected.is_set():
                screen = f"connecting to {settings.mqtt.host}:{settings.mqtt.port} …\n" + screen
            out.write(("\x1b[H\x1b[2J" if tty else "") + screen + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return 0
