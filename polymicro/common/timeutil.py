"""One representation of time: naive UTC datetimes truncated to milliseconds.

MongoDB stores dates with millisecond precision, so every datetime the service keeps is
cut to whole milliseconds before it is stored: what a create returns is exactly what a
later read returns.  Responses render them as RFC 3339 UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from polymicro.common import clock


def truncate_ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_utc_naive(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return truncate_ms(value)


def utcnow() -> datetime:
    """Now, from the application's one clock (``polymicro.common.clock``; tests set it)."""
    return clock.now()


def parse_time(text: str) -> datetime:
    """Parse RFC 3339 (any offset, ``Z``), a naive ISO string or ``YYYY-MM-DD HH:MM:SS``.

    Raises ``ValueError`` on anything else.
    """
    text = text.strip()
    if not text or len(text) > 64:
        raise ValueError("not a time")
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    return to_utc_naive(datetime.fromisoformat(text))


def format_time(value: datetime) -> str:
    """RFC 3339: the year always has four digits (``strftime("%Y")`` gives ``"140"`` for
    the year 140, which no RFC 3339 parser reads)."""
    value = to_utc_naive(value)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}."
        f"{value.microsecond // 1000:03d}Z"
    )
