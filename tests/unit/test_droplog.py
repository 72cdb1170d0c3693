"""A sink reports drops at the first one, then at most once per interval, or at once when forced."""

from __future__ import annotations

from edge.sinks.droplog import DropLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_drop_is_reported_at_once_then_quiet_until_the_interval_passes():
    clock = Clock()
    log = DropLog(60.0, clock)
    assert log.due(0) == 0
    assert log.due(3) == 3
    clock.now += 59.0
    assert log.due(10) == 0
    clock.now += 1.0
    assert log.due(10) == 7  # the drops since the last report, not the total
    assert log.reported == 10


def test_nothing_new_is_never_reported_even_when_forced_or_late():
    clock = Clock()
    log = DropLog(60.0, clock)
    assert log.due(5) == 5
    clock.now += 3600.0
    assert log.due(5) == 0
    assert log.due(5, force=True) == 0


def test_force_reports_new_drops_inside_the_interval():
    clock = Clock()
    log = DropLog(60.0, clock)
    log.due(1)
    clock.now += 1.0
    assert log.due(4, force=True) == 3
    assert log.due(6) == 0  # and the interval restarts from that report
