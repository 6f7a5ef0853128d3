"""One representation of time: naive UTC datetimes truncated to milliseconds.

MongoDB stores dates with millisecond precision, so every datetime the service keeps is
cut to whole milliseconds before it is stored: what a create returns is exactly what a
later read returns.  Responses render them as RFC 3339 UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime


def truncate_ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_utc_naive(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return truncate_ms(value)


def utcnow() -> datetime:
    return truncate_ms(datetime.now(UTC).replace(tzinfo=None))


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
    value = to_utc_naive(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
