"""Request ids on log records, the one polymicro log handler, text and JSON formats.

Configured once per process, whatever the number of apps
    :func:`configure_logging` keeps **one** handler on the root logger for the life of
    the process: the first call installs it, every later call (each ``create_app`` of
    the test suite, a second app in one process) finds it by its mark and only updates
    its format and the levels; it never stacks a second handler nor replaces the first
    (a record is written once, and a reference to the handler stays valid).  An app is
    configured once (``app.extensions["polymicro.logging"]``): ``init_observability``
    does not configure it again after ``create_app`` did.  Handlers it did not install
    (pytest's, an operator's) are left alone, and Flask's own stderr handler on the
    ``polymicro`` logger is removed (it would write each app record twice).

Under gunicorn
    gunicorn's loggers do not propagate to the root (``gunicorn.error`` has its own
    handler, text by default, JSON through ``logconfig_dict`` in gunicorn.conf.py when
    ``POLYMICRO_LOG_FORMAT=json``; ``gunicorn.access`` is off: the app writes one access
    line per request), and each worker builds its app once, so every line is written
    once: tests/test_observability.py runs gunicorn and counts them.

Trace ids
    When tracing is on (polymicro/observability/tracing.py), :class:`RequestIdFilter`
    also puts ``trace_id`` and ``span_id`` (lowercase hex, as OpenTelemetry writes them)
    on records emitted inside a span; the JSON lines carry them beside ``request_id``.
    With tracing off the filter does one extra ``is None`` test.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from flask import Flask
from flask.logging import default_handler
from pythonjsonlogger.json import JsonFormatter

NO_REQUEST_ID = "-"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
APP_KEY = "polymicro.logging"  # app.extensions: the handler this app was configured with

_current_request_id: ContextVar[str | None] = ContextVar("polymicro_request_id", default=None)

# Set by tracing.start_tracing(): returns (trace id, span id) of the current span, or
# None outside one.  None while tracing is off, so the filter costs nothing more then.
trace_ids: Callable[[], tuple[str, str] | None] | None = None


def current_request_id() -> str | None:
    """The id of the request being handled by this thread, or None outside a request."""
    return _current_request_id.get()


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record (``-`` outside a request), and ``trace_id``
    and ``span_id`` inside a span when tracing is on.  On a handler, so that records of
    every logger that reaches the handler get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current_request_id.get() or NO_REQUEST_ID
        if trace_ids is not None:
            ids = trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not at creation),
    so a handler survives pytest replacing stderr between tests."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


class _JsonFormatter(JsonFormatter):
    """``time`` first (RFC 3339 UTC with milliseconds, as the API writes times), then
    level, logger, message, request_id and any extra fields (trace_id, span_id, …)."""

    def add_fields(self, log_data, record, message_dict) -> None:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        log_data["time"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)


def json_formatter() -> logging.Formatter:
    return _JsonFormatter(
        ["levelname", "name", "message", "request_id"],
        rename_fields={"levelname": "level", "name": "logger"},
    )


def text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT)


def _our_handlers(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, "_polymicro", False)]


def configure_logging(app: Flask) -> logging.Handler:
    """Make the root logger's one polymicro handler write ``LOG_FORMAT`` at ``LOG_LEVEL``
    (installed on the first call of the process, reused after); returns it.

    Raises ``RuntimeError`` for an unknown format, before touching anything.
    """
    log_format = str(app.config.get("LOG_FORMAT", "text")).strip().lower()
    if log_format not in LOG_FORMATS:
        raise RuntimeError(
            f"invalid POLYMICRO_LOG_FORMAT: expected one of {', '.join(LOG_FORMATS)}, "
            f"got {app.config.get('LOG_FORMAT')!r}"
        )
    level = str(app.config.get("LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    ours = _our_handlers(root)
    if ours:
        handler = ours[0]
        for extra in ours[1:]:  # cannot happen through this function; heal it anyway
            root.removeHandler(extra)
    else:
        handler = _StderrHandler()
        handler.addFilter(RequestIdFilter())
        handler._polymicro = True  # marks the handler this function owns
        handler._polymicro_format = None
        root.addHandler(handler)
    if handler._polymicro_format != log_format:
        handler.setFormatter(json_formatter() if log_format == "json" else text_formatter())
        handler._polymicro_format = log_format
    root.setLevel(level)
    app_logger = logging.getLogger("polymicro")
    app_logger.setLevel(level)
    # Flask adds its own stderr handler to the app's logger ("polymicro") when it finds
    # none; records would be written twice.
    app_logger.removeHandler(default_handler)
    app.extensions[APP_KEY] = handler
    return handler
