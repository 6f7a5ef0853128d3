"""The one clock of the application: ``now()``, ``monotonic()`` and ``sleep()``.

Every rule that depends on time reads it here (``timeutil.utcnow`` delegates to
:func:`now`), so a test sets the time instead of waiting for it::

    with clock.use(clock.ManualClock()) as manual:
        manual.advance(61)          # a 60-second token is now expired
        clock.sleep(5)              # returns at once; the manual time moved 5 s

A stream's polling loop sleeps through :func:`sleep`, so on a :class:`ManualClock` it
runs without waiting: each sleep moves the time on (and runs the test's ``on_sleep``
hook, which may write something for the next poll to find).

The clock is process-wide (one per process, like the time itself); tests swap it with
:func:`use`, which restores the previous clock when the block ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta


def _truncate_ms(value: datetime) -> datetime:
    # The same cut as timeutil.truncate_ms (which imports this module, not the reverse).
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class SystemClock:
    """The real time: naive UTC to the millisecond, ``time.monotonic``, ``time.sleep``."""

    def now(self) -> datetime:
        return _truncate_ms(datetime.now(UTC).replace(tzinfo=None))

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to (tests).

    ``start`` defaults to the real time now, so what a test stores still looks current
    to the database (mongomock and the TTL indexes compare with the real time).
    ``sleep(s)`` advances the time by ``s`` and then calls ``on_sleep(clock)`` when set.
    Thread-safe: several threads may read and advance it.
    """

    def __init__(self, start: datetime | None = None, on_sleep: Callable | None = None):
        self._now = _truncate_ms(start or SystemClock().now())
        self._elapsed = 0.0
        self._lock = threading.Lock()
        self.on_sleep = on_sleep
        self.slept = 0.0  # total seconds slept (tests check that a loop did wait)

    def now(self) -> datetime:
        with self._lock:
            return _truncate_ms(self._now)

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._elapsed += seconds

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (naive UTC); the monotonic reading moves by the same amount."""
        with self._lock:
            self._elapsed += (when - self._now).total_seconds()
            self._now = when

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
            with self._lock:
                self.slept += seconds
        if self.on_sleep is not None:
            self.on_sleep(self)


Clock = SystemClock | ManualClock

_clock: Clock = SystemClock()


def current() -> Clock:
    return _clock


def now() -> datetime:
    """The time now: naive UTC, truncated to milliseconds (what MongoDB stores)."""
    return _clock.now()


def monotonic() -> float:
    """Seconds on a clock that never goes back (for durations and deadlines)."""
    return _clock.monotonic()


def sleep(seconds: float) -> None:
    """Wait ``seconds`` (at once on a :class:`ManualClock`, which moves on instead)."""
    _clock.sleep(seconds)


@contextlib.contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the process's clock inside the block; the previous one after."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield clock
    finally:
        _clock = previous
