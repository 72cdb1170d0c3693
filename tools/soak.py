#!/usr/bin/env python3
"""Soak test: run the daemon on a looped clip against a real broker and watch for leaks.

Starts its own Mosquitto on a free loopback port (or uses --mqtt-host/--mqtt-port),
runs ``deepfer-edge`` for --minutes, and prints RSS, open file descriptors and
threads of the daemon at start (after warm-up) and end, plus messages per minute.

    python tools/soak.py --clip ../shared/data/faces/pyfeat/single_face.mp4 --minutes 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_figures(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="demo", help="video file (looped) or 'demo'")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the start figures are taken")
    ap.add_argument("--mqtt-host")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    args = ap.parse_args()

    broker = None
    tmp = Path(tempfile.mkdtemp(prefix="deepfer-soak-"))
    host, port = args.mqtt_host, args.mqtt_port
    if not host:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        host, port = "127.0.0.1", free_port()
        (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen([exe, "-c", str(tmp / "mosquitto.conf")], stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    counts: Counter[str] = Counter()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *_: c.subscribe("deepfer/soak/#", qos=1)
    sub.on_message = lambda _c, _u, m: counts.update([m.topic.rsplit("/", 1)[-1]])
    sub.connect(host, port)
    sub.loop_start()

    cmd = [sys.executable, "-m", "edge.cli", "--camera", args.clip, "--loop", "--mqtt-host", host, "--mqtt-port", str(port),
           "--device-id", "soak", "--log-level", "WARNING"]
    daemon = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
    try:
        time.sleep(args.warmup)
        start, t_start, c_start = proc_figures(daemon.pid), time.monotonic(), counts.copy()
        deadline = t_start + args.minutes * 60
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                print(f"daemon exited early with code {daemon.returncode}")
                return 1
            time.sleep(5)
        end, minutes = proc_figures(daemon.pid), (time.monotonic() - t_start) / 60.0
        c_end = counts.copy()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        sub.loop_stop()
        if broker:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"soak: {minutes:.1f} min on {args.clip}, daemon exit code {daemon.returncode}")
    for k in ("rss_mb", "fds", "threads"):
        growth = (end[k] - start[k]) / start[k] * 100 if start[k] else 0.0
        print(f"  {k:<8} start {start[k]:8.1f}  end {end[k]:8.1f}  growth {growth:+.1f}%")
    for topic in ("events", "state", "stats"):
        print(f"  {topic:<8} {(c_end[topic] - c_start[topic]) / minutes:8.1f} per minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
