"""The one clock (polymicro/common/clock.py): the app reads time from it, tests set it."""

from __future__ import annotations

from datetime import datetime, timedelta

from polymicro.common import clock, timeutil
from tests.factories import make_project


def test_utcnow_follows_the_clock_that_is_in_use():
    manual = clock.ManualClock(start=datetime(2026, 3, 1, 12, 0, 0, 123456))
    with clock.use(manual):
        assert timeutil.utcnow() == datetime(2026, 3, 1, 12, 0, 0, 123000)
        manual.advance(90)
        assert timeutil.utcnow() == datetime(2026, 3, 1, 12, 1, 30, 123000)
    assert abs(timeutil.utcnow() - clock.SystemClock().now()) < timedelta(seconds=5)


def test_a_manual_sleep_moves_the_time_on_at_once_and_calls_the_hook():
    calls = []
    manual = clock.ManualClock(on_sleep=lambda c: calls.append(c.monotonic()))
    start = manual.now()
    with clock.use(manual):
        clock.sleep(2.5)
        clock.sleep(0.5)
    assert manual.now() - start == timedelta(seconds=3)
    assert calls == [2.5, 3.0]
    assert manual.slept == 3.0


def test_set_jumps_both_readings():
    manual = clock.ManualClock(start=datetime(2026, 1, 1))
    manual.set(datetime(2026, 1, 2))
    assert manual.now() == datetime(2026, 1, 2)
    assert manual.monotonic() == 86400


def test_use_restores_the_previous_clock_even_after_an_error():
    before = clock.current()
    try:
        with clock.use(clock.ManualClock()):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert clock.current() is before


def test_documents_take_their_timestamps_from_the_clock(ctx):
    when = clock.SystemClock().now() - timedelta(hours=3)
    with clock.use(clock.ManualClock(start=when)):
        project = make_project()
    assert project.created_at == when
    assert project.updated_at == when
