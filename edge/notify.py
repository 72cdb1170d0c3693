"""Talking to systemd: readiness, status and watchdog (sd_notify).

A few datagrams on a unix socket do not justify a dependency (python-systemd
needs libsystemd headers to build), so this speaks the protocol directly; see
sd_notify(3). Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so
the pipeline calls it unconditionally.

The environment is passed in rather than read here: the CLI hands over
:func:`edge.settings.service_manager_environment`, tests hand over a dict.
Credentials are the settings' business (:func:`edge.settings.read_credential`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """sd_notify client for a ``Type=notify`` service.

    ``watchdog()`` is cheap enough to call every frame: it sends at most once
    per ``watchdog_interval_s`` (half of ``WatchdogSec=``, as systemd advises).
    Socket errors are never raised; the first one is logged at debug level,
    because a daemon that runs for months must not die over a status line.
    """

    def __init__(self, environ: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        # status() may come from another thread than the frame loop's watchdog().
        self._lock = threading.Lock()
        self._failed = False
        self._last_watchdog: float | None = None
        self._watchdog_interval_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when no watchdog is armed."""
        return self._watchdog_interval_s if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when it was sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # A busy manager must never stall the frame loop; a lost status line is harmless.
                    self._sock.setblocking(False)
                self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.debug("sd_notify to %s failed (%s); further failures are not logged", self._display_address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """Start-up is complete: systemd marks the unit active and arms the watchdog."""
        self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))
        self._last_watchdog = self._clock()

    def status(self, text: str) -> None:
        """Free-form line shown by ``systemctl status``."""
        self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive ping, sent at most once per ``watchdog_interval_s``; True when one went out."""
        interval = self.watchdog_interval_s
        if interval is None:
            return False
        now = self._clock()
        if self._last_watchdog is not None and now - self._last_watchdog < interval:
            return False
        self._last_watchdog = now
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        """Shutdown has begun (systemd then waits TimeoutStopSec= instead of the watchdog)."""
        self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    @property
    def _display_address(self) -> str:
        if isinstance(self._address, bytes):
            return "@" + self._address[1:].decode("utf-8", "replace")
        return str(self._address)


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: a leading NUL instead of '@'.
        return b"\0" + value[1:].encode()
    if value:
        # vsock:… (systemd 254+, VMs) and relative paths are not for a Pi daemon.
        log.debug("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications are off", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    # WATCHDOG_PID names the process the watchdog is meant for; a child that
    # inherited the environment must not ping on its parent's behalf.
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.debug("WATCHDOG_USEC=%r is not an integer; watchdog pings are off", usec)
        return None
    return value / 2_000_000 if value > 0 else None


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(str(text).split("\n"))
