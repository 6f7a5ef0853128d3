"""Request ids, structured logs and Prometheus metrics.

``init_observability(app)`` (called by ``create_app``) does three things, each safe to
repeat for every app a process creates (the tests create hundreds):

Request ids
    Every request gets an id: the client's ``X-Request-ID`` when it is 1–128 characters
    of ``[A-Za-z0-9._-]``, else a new ``uuid4().hex``.  It is echoed in the response's
    ``X-Request-ID`` header and put on every log record emitted while the request is
    handled (a contextvar read by :class:`RequestIdFilter`; ``-`` outside a request).

Logs
    One handler on the root logger, writing to stderr: ``LOG_FORMAT=text`` gives
    ``time level logger [request id]: message``; ``LOG_FORMAT=json`` gives one JSON object
    per line with ``time``, ``level``, ``logger``, ``message``, ``request_id`` (and any
    ``extra`` fields).  Each request ends with an access line from ``polymicro.access`` at
    INFO carrying ``method``, ``path``, ``status`` and ``duration_ms``.  Configuring again
    replaces the handler; it never stacks a second one, and handlers it did not install
    (pytest's, gunicorn's) are left alone.

Metrics
    ``GET /metrics`` serves the Prometheus text format (``METRICS_ENABLED``; no
    authentication, so keep it off the public network: scrape it from inside).  Requests
    are counted and timed by route template (``/api/logs/<objectid:log_id>``, never the
    raw path), method and status; :func:`record_ingest` counts stored logs and CPU points.
    The metric objects exist once per process.  When ``PROMETHEUS_MULTIPROC_DIR`` is set
    (gunicorn.conf.py sets it before the workers fork) ``/metrics`` sums every worker's
    files through ``MultiProcessCollector``; otherwise it serves the default registry.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

from flask import Flask, Response, request
from flask.logging import default_handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
NO_REQUEST_ID = "-"

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
ACCESS_LOGGER = "polymicro.access"

INGEST_KINDS = ("logs", "cpu_points")
# Methods outside this set are counted as "other": a client cannot invent label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ENDPOINT = "unmatched"  # 404/405 from routing: no route template to name
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Per-request state lives in the WSGI environ (one per request, whatever the contexts).
_START = "polymicro.start"
_REQUEST_ID = "polymicro.request_id"
_OBSERVED = "polymicro.observed"

_current_request_id: ContextVar[str | None] = ContextVar("polymicro_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled by this thread, or None outside a request."""
    return _current_request_id.get()


# --- request ids ------------------------------------------------------------------------


def _request_id_from(header: str | None) -> str:
    if header and _VALID_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record (``-`` outside a request).  On a handler, so
    that records of every logger that reaches the handler get it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current_request_id.get() or NO_REQUEST_ID
        return True


# --- logging ----------------------------------------------------------------------------


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
    level, logger, message, request_id and any extra fields."""

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


def configure_logging(app: Flask) -> logging.Handler:
    """Install (or replace) the one polymicro handler on the root logger; returns it.

    Idempotent: a handler this function installed earlier is removed first.  Sets the
    level of the root and ``polymicro`` loggers to ``LOG_LEVEL``.
    """
    log_format = str(app.config.get("LOG_FORMAT", "text")).strip().lower()
    if log_format not in LOG_FORMATS:
        raise RuntimeError(
            f"invalid POLYMICRO_LOG_FORMAT: expected one of {', '.join(LOG_FORMATS)}, "
            f"got {app.config.get('LOG_FORMAT')!r}"
        )
    level = str(app.config.get("LOG_LEVEL", "INFO")).upper()
    handler = _StderrHandler()
    handler.setFormatter(json_formatter() if log_format == "json" else text_formatter())
    handler.addFilter(RequestIdFilter())
    handler._polymicro = True  # marks the handler this function owns

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_polymicro", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    app_logger = logging.getLogger("polymicro")
    app_logger.setLevel(level)
    # Flask adds its own stderr handler to the app's logger ("polymicro") when it finds
    # none; records would be written twice.
    app_logger.removeHandler(default_handler)
    return handler


# --- metrics ----------------------------------------------------------------------------


class _Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "polymicro_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["endpoint", "method", "status"],
        )
        self.latency = Histogram(
            "polymicro_http_request_duration_seconds",
            "Time from the start of the request to the response, by route template, "
            "method and status.",
            ["endpoint", "method", "status"],
            buckets=_LATENCY_BUCKETS,
        )
        self.ingested = Counter(
            "polymicro_ingested_items",
            "Items stored through the API, by kind (logs, cpu_points).",
            ["kind"],
        )
        for kind in INGEST_KINDS:
            self.ingested.labels(kind=kind)  # present (at 0) before the first write


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> _Metrics:
    """The process's metric objects, created (and registered) on first use, once."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def record_ingest(kind: str, n: int) -> None:
    """Count ``n`` items of ``kind`` (``logs`` or ``cpu_points``) stored.  Call it after
    the write succeeded; never raises into the caller's write."""
    if n <= 0:
        return
    try:
        metrics().ingested.labels(kind=kind).inc(n)
    except Exception:  # metrics must never fail a write that has been stored
        logging.getLogger(__name__).exception("could not count %s ingested %s", n, kind)


def metrics_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: every worker's files in multiprocess mode, else this
    process's default registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_view() -> Response:
    return Response(
        generate_latest(metrics_registry()),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )


# --- request hooks ----------------------------------------------------------------------


def _start_request() -> None:
    environ = request.environ
    environ[_START] = time.perf_counter()
    request_id = _request_id_from(request.headers.get(REQUEST_ID_HEADER))
    environ[_REQUEST_ID] = request_id
    _current_request_id.set(request_id)


def _observe(status: int, metrics_enabled: bool) -> None:
    """Access log line and request metrics, once per request."""
    environ = request.environ
    if environ.get(_OBSERVED):
        return
    environ[_OBSERVED] = True
    duration = time.perf_counter() - environ.get(_START, time.perf_counter())
    logging.getLogger(ACCESS_LOGGER).info(
        "%s %s %s %.1fms",
        request.method,
        request.path,
        status,
        duration * 1000,
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        },
    )
    if metrics_enabled:
        rule = request.url_rule
        labels = {
            "endpoint": rule.rule if rule is not None else UNMATCHED_ENDPOINT,
            "method": request.method if request.method in _METHODS else "other",
            "status": str(status),
        }
        m = metrics()
        m.requests.labels(**labels).inc()
        m.latency.labels(**labels).observe(duration)


def _register_hooks(app: Flask, metrics_enabled: bool) -> None:
    # First before_request, last after_request and last teardown: another hook that
    # answers early (415, 401, 429) still gets an id, and log lines written by the other
    # hooks still carry it.
    def start_request() -> None:
        _start_request()

    def finish_request(response):
        if _REQUEST_ID not in request.environ:  # start_request did not run (should not happen)
            _start_request()
        response.headers[REQUEST_ID_HEADER] = request.environ[_REQUEST_ID]
        _observe(response.status_code, metrics_enabled)
        return response

    def end_request(exc: BaseException | None) -> None:
        try:
            if exc is not None and request.environ.get(_START) is not None:
                _observe(500, metrics_enabled)  # propagated: after_request did not run
        finally:
            _current_request_id.set(None)

    app.before_request_funcs.setdefault(None, []).insert(0, start_request)
    app.after_request_funcs.setdefault(None, []).insert(0, finish_request)
    app.teardown_request_funcs.setdefault(None, []).insert(0, end_request)


def init_observability(app: Flask) -> None:
    """Attach request ids, structured logging and (``METRICS_ENABLED``) ``/metrics``."""
    configure_logging(app)
    metrics_enabled = bool(app.config.get("METRICS_ENABLED", True))
    if metrics_enabled:
        metrics()
        app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    _register_hooks(app, metrics_enabled)
