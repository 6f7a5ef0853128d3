"""Request ids, structured logs, Prometheus metrics and (opt-in) OpenTelemetry tracing.

``create_app`` calls :func:`configure_logging` first, :func:`init_tracing` before the
database is connected, and :func:`init_observability` last; each is safe to repeat for
every app a process creates (the tests create hundreds).

- ``logs.py``: the request id on every log record, one root handler per process
  (``LOG_FORMAT`` text or json, ``LOG_LEVEL``), configured once per app;
- ``hooks.py``: the per-request hooks: ``X-Request-ID`` (the client's when it is 1–128
  characters of ``[A-Za-z0-9._-]``, else a new one), one access line per request from
  ``polymicro.access`` at INFO (``method``, ``path``, ``status``, ``duration_ms``), and
  the request metrics;
- ``metrics.py``: ``GET /metrics`` (``METRICS_ENABLED``; no authentication, so keep it
  off the public network), ``polymicro_http_requests_total`` and
  ``polymicro_http_request_duration_seconds`` by route template
  (``/api/logs/<objectid:log_id>``, never the raw path), method and status, and
  ``polymicro_ingested_items_total`` (:func:`record_ingest`); gunicorn workers share
  them through ``PROMETHEUS_MULTIPROC_DIR``;
- ``tracing.py``: OpenTelemetry spans (Flask, pymongo, Redis) to an OTLP/HTTP endpoint,
  off unless ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set.

Why the request metrics are hand-written, not prometheus-flask-exporter (issue 8)
    Measured with prometheus-flask-exporter 0.23.2 (``bench/hooks.py --exporter``, and
    its source), ``group_by="url_rule"``, against these hooks:

    - cost: on the bare app it adds 40 µs of CPU per request, against 6 µs for our
      metrics part (the ``metrics`` row minus the ``request id`` row of the same run;
      18 µs with the request id hook included);
    - label explosion: its ``method`` label is the raw request method, so each method a
      client invents (``BREW``, ``XYZZY``, …) makes new series in two metrics; ours
      counts them as ``other``.  It cannot be told otherwise (only the route label is a
      parameter);
    - early answers are not timed: its ``before_request`` is appended after the others,
      so a 401, 415 or 429 answered by an earlier hook is counted but has no duration;
    - one app per process: a second ``PrometheusMetrics`` on the default registry finds
      its info metric already registered and silently registers **no hooks** (the test
      suite's hundreds of apps would count nothing after the first); a registry per app
      would split the counters;
    - names: its counter is ``<prefix>_http_request_total`` with ``method``/``status``
      only (no route), and it adds ``…_exceptions_total`` and ``…_exporter_info``;
      keeping our names and the route on the counter would mean a custom metric anyway;
    - multiprocess: it offers the same thing we do (``MultiProcessCollector`` per
      scrape from ``PROMETHEUS_MULTIPROC_DIR``, ``mark_process_dead`` in
      ``child_exit``); nothing to gain there.

    So the library would cost more per request and lose two guarantees; the request
    metrics stay ~40 lines over prometheus-client (which we keep).

Per-request cost (issue 9)
    ``bench/hooks.py --against <tree before>`` (2026-11, one run, µs of CPU per
    ``GET /api/health/live`` over the bare app's 111 µs; before → after):

    - request id: 31.1 → 12.4 (the hook ÷2.5);
    - request metrics on top of it: 19.1 → 5.9 (÷3.2; cached label children);
    - access line: 38.8 → 38.6 text, 53.4 → 58.6 JSON, i.e. unchanged: it is the
      standard library's record, formatter and write; off (level above INFO) it now
      costs nothing, the record is not even built;
    - everything as deployed, text logs: 462 → 416 µs per request (ratio 0.90); the
      rate limiter (flask-limiter, ~190 µs) and the security headers (~26 µs) are the
      rest (polymicro/security.py);
    - tracing off costs nothing: ``bench/hooks.py --against`` the tree just before it
      (same run: all hooks, JSON logs, 526 vs 521 µs, ratio 1.01; our rows 1.01–1.03
      while rows whose code did not change at all, the security headers and the rate
      limiter, moved 1.02–1.06: within the noise); tracing on (Flask span to a no-op
      exporter) adds ~300 µs.
"""

from __future__ import annotations

from flask import Flask

from polymicro.observability import hooks, tracing
from polymicro.observability.hooks import ACCESS_LOGGER, REQUEST_ID_HEADER
from polymicro.observability.logs import (
    LOG_FORMATS,
    NO_REQUEST_ID,
    TEXT_FORMAT,
    RequestIdFilter,
    configure_logging,
    current_request_id,
    json_formatter,
    text_formatter,
)
from polymicro.observability.metrics import (
    INGEST_KINDS,
    UNMATCHED_ENDPOINT,
    metrics,
    metrics_registry,
    metrics_view,
    record_ingest,
)
from polymicro.observability.tracing import init_tracing

__all__ = [
    "ACCESS_LOGGER",
    "INGEST_KINDS",
    "LOG_FORMATS",
    "NO_REQUEST_ID",
    "REQUEST_ID_HEADER",
    "TEXT_FORMAT",
    "UNMATCHED_ENDPOINT",
    "RequestIdFilter",
    "configure_logging",
    "current_request_id",
    "init_observability",
    "init_tracing",
    "json_formatter",
    "metrics",
    "metrics_registry",
    "metrics_view",
    "record_ingest",
    "text_formatter",
]


def init_observability(app: Flask) -> None:
    """Attach request ids, the access line, (``METRICS_ENABLED``) ``/metrics`` and the
    request metrics, and (when tracing) the Flask span right after the request id.
    Logging is configured here only if ``create_app`` has not done it for this app."""
    from polymicro.observability.logs import APP_KEY

    if APP_KEY not in app.extensions:
        configure_logging(app)
    init_tracing(app)  # no-op when create_app did it, or when tracing is off
    metrics_enabled = bool(app.config.get("METRICS_ENABLED", True))
    if metrics_enabled:
        metrics()
        app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    hooks.register(app, metrics_enabled)
    if app.extensions.get(tracing.APP_KEY):
        _span_hooks_after_request_id(app)


def _span_hooks_after_request_id(app: Flask) -> None:
    """The Flask instrumentation appends its hooks; move its span start to right after
    our request id (so early answers get a span and the span gets the id) and its span
    end to the very end (teardowns run in reverse: index 0 is last), so every log line
    of the request, our last one included, is inside the span."""
    before = app.before_request_funcs[None]
    otel = [f for f in before if tracing.is_flask_instrumentation_hook(f)]
    before[:] = [f for f in before if f not in otel]
    before[1:1] = otel
    teardown = app.teardown_request_funcs[None]
    otel = [f for f in teardown if tracing.is_flask_instrumentation_hook(f)]
    teardown[:] = otel + [f for f in teardown if f not in otel]
