"""When a sink says it dropped messages: the first drop at once, then at most once per interval.

A sink that falls behind drops many messages in a row; one warning per message would bury the
log (and, on a Pi, wear its SD card through the journal). Pure: the clock is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DROP_LOG_INTERVAL_S = 60.0


class DropLog:
    """Tracks what a sink's drop counter was when last reported."""

    def __init__(self, interval_s: float = DROP_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self.reported = 0  # the counter's value at the last report
        self._reported_at = 0.0

    def due(self, total: int, force: bool = False) -> int:
        """The drops to report now (those since the last report), or 0 to stay quiet.

        A non-zero answer counts as reported. ``force`` reports at once (an outage ended, the sink stops).
        """
        new = total - self.reported
        now = self._clock()
        if new <= 0 or not (self.reported == 0 or force or now - self._reported_at >= self.interval_s):
            return 0
        self.reported, self._reported_at = total, now
        return new
