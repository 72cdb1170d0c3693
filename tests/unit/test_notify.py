"""sd_notify client and credential helper, against real unix datagram sockets."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.notify import SystemdNotifier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def nothing_pending(sock: socket.socket) -> bool:
    # Datagrams to a local unix socket are queued by the time sendto() returns,
    # so a non-blocking read settles it without waiting.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"deepfer-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def test_ready_status_stopping_reach_a_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready("camera csi open")
    assert receive(sock) == ["READY=1", "STATUS=camera csi open"]
    n.status("12.5 fps\n2 faces")
    assert receive(sock) == ["STATUS=12.5 fps 2 faces"]  # a newline would start a new assignment
    n.stopping()
    assert receive(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_namespace_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, name = abstract_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000"})
    assert n.enabled
    n.ready()
    assert receive(sock) == ["READY=1"]
    n.status("running")
    assert receive(sock) == ["STATUS=running"]


def test_watchdog_is_rate_limited_to_half_the_timeout(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    clock = FakeClock()
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, clock=clock)
    assert n.watchdog_interval_s == 15.0
    assert n.watchdog() is True
    assert receive(sock) == ["WATCHDOG=1"]
    for _ in range(100):  # a frame loop calling every frame
        clock.now += 0.1
        assert n.watchdog() is False
    assert nothing_pending(sock)
    clock.now += 5.0  # 15 s since the first ping
    assert n.watchdog() is True
    assert receive(sock) == ["WATCHDOG=1"]
    assert n.watchdog() is False
    assert nothing_pending(sock)


def test_ready_counts_as_the_start_of_the_watchdog_period(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    clock = FakeClock()
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, clock=clock)
    n.ready()
    assert receive(sock) == ["READY=1"]
    assert n.watchdog() is False
    clock.now += 5.0
    assert n.watchdog() is True
    assert receive(sock) == ["WATCHDOG=1"]


def test_watchdog_meant_for_another_process_is_ignored(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.enabled
    assert n.watchdog_interval_s is None
    assert n.watchdog() is False
    assert nothing_pending(sock)


@pytest.mark.parametrize("usec", ["", "0", "soon"])
def test_no_watchdog_without_a_valid_timeout(path_socket: tuple[socket.socket, str], usec: str) -> None:
    sock, path = path_socket
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec})
    assert n.watchdog_interval_s is None
    assert n.watchdog() is False
    assert nothing_pending(sock)


@pytest.mark.parametrize("value", [None, "", "relative/path.sock", "vsock:2:1234", "@"])
def test_disabled_outside_systemd(value: str | None) -> None:
    env = {"WATCHDOG_USEC": "30000000"} if value is None else {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "30000000"}
    n = SystemdNotifier(env)
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.notify("READY=1") is False
    n.ready("x")
    n.status("x")
    assert n.watchdog() is False
    n.stopping()


def test_a_vanished_socket_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "2000000"})
    assert n.enabled
    with caplog.at_level("DEBUG", logger="edge.notify"):
        n.ready()
        n.status("x")
        assert n.notify("STATUS=y") is False
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per frame
    assert "gone.sock" in failures[0].getMessage()


def test_recovers_when_the_socket_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    assert n.notify("STATUS=early") is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        assert n.notify("STATUS=late") is True
        assert receive(sock) == ["STATUS=late"]
    finally:
        sock.close()
