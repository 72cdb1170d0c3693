"""JSON lines on standard output: one line per message, for ``deepfer-edge run --stdout | jq``.

Each line is ``{"topic": "<relative topic>", "payload": <payload>}``, e.g.::

    {"topic":"events","payload":{"v":1,"ts":"…","device_id":"pi","seq":3,…}}
    {"topic":"state","payload":{"v":1,…,"faces":1,"dominant":"happy",…}}

The topic is the relative one (``events``, ``state``, ``stats``) because
standard output has no prefix or broker; the payload is exactly what MQTT
subscribers receive (it carries ``device_id`` already). Typical filters::

    deepfer-edge run --stdout | jq -c 'select(.topic == "events") | .payload'
    deepfer-edge run --stdout | jq -r 'select(.topic == "state") | .payload.dominant'

Lines are written by a writer thread from a bounded queue, so a slow reader
never stalls the pipeline: when the queue is full the newest message is
dropped and counted (``dropped`` in ``status()``). When the reader goes away
(``| head``), the sink stops writing quietly instead of raising BrokenPipe
and calls ``on_closed`` (the daemon can stop when stdout was its only
sink).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from edge.protocols import Message
from edge.sinks.droplog import DropLog
from edge.sinks.wire import to_json

log = logging.getLogger(__name__)

_STOP = object()


class StdoutSink:
    """Writes messages as JSON lines to ``stream`` (default: the process's standard output)."""

    name = "stdout"

    def __init__(
        self,
        stream: TextIO | None = None,
        queue_size: int = 1000,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.on_closed = on_closed
        self._thread: threading.Thread | None = None
        self._written = 0
        self._dropped = 0
        self._drop_log = DropLog()
        self._closed = False  # the reader went away; later messages are discarded

    @staticmethod
    def format(message: Message) -> str:
        """The JSON line for ``message`` (without the newline)."""
        return to_json({"topic": message.topic, "payload": message.payload})

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="stdout-sink", daemon=True)
        self._thread.start()

    def publish(self, message: Message) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._dropped += 1  # logged by the writer thread: logging here would be I/O on the caller's thread

    def status(self) -> Mapping[str, Any]:
        return {"written": self._written, "dropped": self._dropped, "queued": self._queue.qsize(), "closed": self._closed}

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # the writer is stuck on a blocked pipe; a daemon thread, it dies with the process
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            # Drain what is already waiting so that a burst costs one flush, not one per line.
            while item is not _STOP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            stop = batch[-1] is _STOP
            lines = [self.format(m) for m in batch if m is not _STOP]
            if lines and not self._closed:
                self._write(lines)
            self._log_drops()
            if stop:
                return

    def _log_drops(self) -> None:
        if not self._closed and self._drop_log.due(self._dropped):
            log.warning("standard output is not keeping up; %d messages dropped so far", self._dropped)

    def _write(self, lines: list[str]) -> None:
        out = self._out()
        try:
            out.write("\n".join(lines) + "\n")
            out.flush()
            self._written += len(lines)
        except BrokenPipeError:
            self._handle_broken_pipe(out)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            if not self._closed:
                log.warning("cannot write to standard output (%s); the stdout sink stops writing", exc)
            self._closed = True

    def _handle_broken_pipe(self, out: TextIO) -> None:
        if self._closed:
            return
        self._closed = True
        log.info("standard output was closed by its reader; the stdout sink stops writing")
        if out is sys.stdout:
            # Python flushes sys.stdout again at exit and would print a BrokenPipeError then;
            # pointing the descriptor at /dev/null makes that final flush harmless.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, out.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
        if self.on_closed is not None:
            try:
                self.on_closed()
            except Exception:  # a faulty hook must not kill the writer thread silently
                log.exception("on_closed hook failed")
