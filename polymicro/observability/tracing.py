"""OpenTelemetry tracing of polymicro itself: Flask, pymongo and Redis spans over OTLP/HTTP.

Off unless the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and ``OTEL_SDK_DISABLED`` is not
``true``).  Off, nothing of OpenTelemetry is imported or put on the request path
(bench/hooks.py: same µs per request as before tracing existed, within noise).  On:

- one ``TracerProvider`` per process, set as the global one, with a
  ``BatchSpanProcessor`` sending to ``OTLPSpanExporter`` (protobuf over HTTP).  The
  exporter reads the standard variables itself: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``,
  ``…_HEADERS``, ``…_TIMEOUT``, ``…_COMPRESSION``, ``…_CERTIFICATE``; the batch
  processor ``OTEL_BSP_*``; the sampler ``OTEL_TRACES_SAMPLER[_ARG]`` (default: parent
  based, always on); the resource ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
  (service name ``polymicro`` unless one of them names it);
- pymongo (a client span per command: the instrumentation registers a pymongo command
  listener, which only clients created afterwards get, so ``create_app`` starts tracing
  before it connects the database) and Redis (cache and rate-limit calls);
- each app's Flask requests (a server span named by route template;
  ``OTEL_PYTHON_FLASK_EXCLUDED_URLS`` excludes paths, e.g. ``metrics,api/health/live``).
  The span gets the request id (attribute ``polymicro.request_id``), and every log
  record emitted inside a span gets ``trace_id`` and ``span_id``
  (polymicro/observability/logs.py), so a JSON log line and its trace find each other.
  The span is started in the second ``before_request`` hook (right after the request
  id) and ended in the last teardown, so early answers (401, 415, 429) have a span and
  every log line of the request is inside it.

Under gunicorn the provider is made after the fork, in the worker: gunicorn.conf.py's
``post_fork`` calls :func:`start_tracing`, so the ``BatchSpanProcessor``'s export thread
lives in the process whose spans it sends (a thread started in the master would not
survive the fork; the app is not preloaded, so ``create_app`` runs in the worker too and
finds tracing started).  :func:`start_tracing` is idempotent per process.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask

from polymicro.observability import logs

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
DEFAULT_SERVICE_NAME = "polymicro"
REQUEST_ID_ATTRIBUTE = "polymicro.request_id"
APP_KEY = "polymicro.tracing"  # app.extensions: this app's requests are traced

_lock = threading.Lock()
_provider: Any = None  # the process's TracerProvider, once made
_on = False  # pymongo and Redis instrumented, trace ids on log records
_processors: list = []  # the span processors added to _provider


def tracing_configured() -> bool:
    """Whether the environment asks for tracing (an OTLP endpoint, SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def tracing_started() -> bool:
    return _on


def _resource():
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _current_trace_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def start_tracing(span_processor=None) -> bool:
    """Start tracing for this process when configured; returns whether it is on.

    Once per process: the tracer provider (global), its span processor (by default a
    ``BatchSpanProcessor`` to OTLP/HTTP; tests pass a ``SimpleSpanProcessor`` over an
    in-memory exporter), the pymongo and Redis instrumentations, and trace ids on log
    records.  A later call only adds ``span_processor``, when one is given that was
    not added before.
    """
    global _provider, _on
    if not tracing_configured():
        return False
    with _lock:
        if _provider is None:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider

            _provider = TracerProvider(resource=_resource())
            if span_processor is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                span_processor = BatchSpanProcessor(OTLPSpanExporter())
            trace.set_tracer_provider(_provider)
        if span_processor is not None and span_processor not in _processors:
            _provider.add_span_processor(span_processor)
            _processors.append(span_processor)
        if not _on:
            from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            # Both take the global provider (the one above).
            PymongoInstrumentor().instrument()
            RedisInstrumentor().instrument()
            logs.trace_ids = _current_trace_ids
            _on = True
            log.info("tracing on: spans of service %s over OTLP/HTTP", _service_name())
    return True


def _service_name() -> str:
    return str(_provider.resource.attributes.get("service.name", DEFAULT_SERVICE_NAME))


def stop_tracing() -> None:
    """Flush the spans and stop tracing in this process: pymongo and Redis make no more
    spans, log records get no more trace ids, and apps built afterwards are not traced
    (for tests).  The provider stays, as OpenTelemetry's global one can be set only
    once; a later :func:`start_tracing` uses it again."""
    global _on
    with _lock:
        if not _on:
            return
        from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        PymongoInstrumentor().uninstrument()
        RedisInstrumentor().uninstrument()
        logs.trace_ids = None
        _provider.force_flush()
        _on = False


def flush_tracing(timeout_millis: int = 5000) -> None:
    """Send the spans still queued (gunicorn.conf.py's ``worker_exit``); no-op when off."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def _request_hook(span, environ: dict) -> None:
    from polymicro.observability.hooks import REQUEST_ID

    request_id = environ.get(REQUEST_ID)
    if request_id and span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def init_tracing(app: Flask) -> bool:
    """Trace ``app``'s requests when tracing is configured (starting it for the process
    if need be); returns whether it does.  Call it before the database is connected
    (see the module docstring); ``init_observability`` puts its hooks in place."""
    if APP_KEY in app.extensions:
        return app.extensions[APP_KEY]
    on = start_tracing()
    if on:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(
            app,
            request_hook=_request_hook,
            enable_commenter=False,  # SQL comments: polymicro has no SQL
            tracer_provider=_provider,
        )
    app.extensions[APP_KEY] = on
    return on


def is_flask_instrumentation_hook(func) -> bool:
    return getattr(func, "__module__", "") == "opentelemetry.instrumentation.flask"
