"""A real Mosquitto broker for tests, on a free loopback port, and a paho subscriber to watch it.

``Broker`` writes a mosquitto.conf into its own directory, starts the binary,
waits until the port accepts connections, and can be stopped and started
again on the same port (to simulate outages). ``Subscriber`` records what
arrives; ``read_retained`` reads the retained messages under a filter,
knowing for sure when they are all in (a marker message follows them).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.settings import MqttSettings

HOST = "127.0.0.1"


def mosquitto_binary() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def mosquitto_passwd_binary() -> str | None:
    for candidate in (shutil.which("mosquitto_passwd"), "/usr/bin/mosquitto_passwd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # CA certificate that signed ``cert``
    cert: Path  # server certificate for 127.0.0.1 / localhost
    key: Path
    other_ca: Path  # a CA that signed nothing the broker uses
    client_cert: Path  # a client certificate signed by ``ca`` (mutual TLS)
    client_key: Path
    stranger_cert: Path  # a client certificate signed by ``other_ca``: a mutual-TLS broker rejects it
    stranger_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl not found")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other_ca"):
        run("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=deepfer test {name}")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    for name, ca in (("client", "ca"), ("stranger", "other_ca")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=deepfer test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2")
    d = directory
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "other_ca.crt",
                    d / "client.crt", d / "client.key", d / "stranger.crt", d / "stranger.key")


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    binary = mosquitto_passwd_binary()
    if binary is None:
        raise RuntimeError("mosquitto_passwd not found")
    first = True
    for user, password in users.items():
        args = [binary, "-b", *(["-c"] if first else []), str(path), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        first = False
    return path


class Broker:
    """One mosquitto process with a generated configuration; ``stop``/``start`` keep the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        password_file: Path | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto not found")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.persistence = persistence
        self.password_file = password_file
        self.tls = tls
        self.require_certificate = require_certificate  # mutual TLS: clients need a certificate signed by tls.ca
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [
            # As root mosquitto would switch to the 'mosquitto' user, which cannot read the test's files.
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
            if self.require_certificate:
                lines.append("require_certificate true")
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not open {self.host}:{self.port} within {timeout} s:\n{self.log_text()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # lets a persistent broker save its sessions
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def settings(self, **overrides: Any) -> MqttSettings:
        """MqttSettings for this broker with test-friendly short reconnect delays."""
        values: dict[str, Any] = {
            "enabled": True,
            "host": self.host,
            "port": self.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "keepalive_s": 5,
            "tls": self.tls is not None,
            "ca_file": self.tls.ca if self.tls else None,
        }
        values.update(overrides)
        return MqttSettings(**values)

    def client(self, client_id: str | None = None, clean_session: bool = True, **auth: str) -> mqtt.Client:
        """A paho client configured for this broker (not connected)."""
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
        )
        if auth:
            client.username_pw_set(auth["username"], auth.get("password"))
        if self.tls:
            client.tls_set(
                ca_certs=str(self.tls.ca),
                certfile=str(self.tls.client_cert) if self.require_certificate else None,
                keyfile=str(self.tls.client_key) if self.require_certificate else None,
            )
        client.reconnect_delay_set(0.1, 0.5)
        return client

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1, **auth: str) -> None:
        """Publish one message and wait until the broker acknowledged it."""
        client = self.client(**auth)
        client.connect(self.host, self.port)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    dup: bool = False  # a redelivery (e.g. a persistent broker re-sending after its restart)

    @property
    def text(self) -> str:
        return self.payload.decode()


@dataclass
class Subscriber:
    """Subscribes to ``topics`` (waits for SUBACK) and records every message.

    ``persistent=True`` uses a fixed client id and clean_session=False, so that
    a persistent broker keeps queueing QoS 1 messages for it while it is away.
    """

    broker: Broker
    topics: list[str]
    persistent: bool = False
    client_id: str = field(default_factory=lambda: f"sub-{uuid.uuid4().hex[:8]}")
    auth: dict[str, str] = field(default_factory=dict)
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = self.broker.client(self.client_id, clean_session=not self.persistent, **self.auth)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"subscriber could not subscribe to {self.topics}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure and not flags.session_present:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, bool(msg.dup)))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_retained(broker: Broker, topic_filter: str, **auth: str) -> dict[str, bytes]:
    """Retained messages under ``topic_filter`` now: topic -> payload (empty payloads mean none)."""
    marker = f"test-marker/{uuid.uuid4().hex}"
    sub = Subscriber(broker, [topic_filter, marker], auth=auth)
    try:
        # Mosquitto queues retained messages while handling SUBSCRIBE; a message published after
        # the SUBACK therefore arrives after all of them.
        sub.client.publish(marker, b"end", qos=1)
        if not sub.wait_for(lambda ms: any(m.topic == marker for m in ms)):
            raise RuntimeError("marker message never arrived")
        return {m.topic: m.payload for m in sub.messages if m.retain and m.topic != marker}
    finally:
        sub.close()
