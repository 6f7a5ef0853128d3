"""Prometheus metrics: the metric objects, ``/metrics``, and ingest counts.

The metric objects exist once per process (created on first use, not at import).
``/metrics`` serves this process's default registry, or, when
``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py sets it before the workers fork),
every worker's files summed through ``MultiProcessCollector``.

The request hooks (polymicro/observability/hooks.py) count and time each request with
the label *children* of one (route template, method, status) kept in a dict, so a
request costs two dict look-ups, not two ``labels()`` calls (each takes a lock and
builds a key).  The dict is bounded: route templates and the eight known methods
(anything else is ``other``) times the status codes the app answers.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from polymicro.common import process

# In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by gunicorn.conf.py) each value
# checks its process id on every inc/observe, with os.getpid(): a system call, three per
# request (the counter, the histogram's sum and bucket).  The same check with the id kept
# by polymicro.common.process (read again in every forked child, so it is distinct in
# simultaneously running processes, as prometheus_client requires).  Done here, at import,
# before any metric exists: every metric of this process is made in this module, and two
# value classes of one process would share its files.
if getattr(values.ValueClass, "_multiprocess", False):
    values.ValueClass = values.MultiProcessValue(process_identifier=process.pid)

INGEST_KINDS = ("logs", "cpu_points")
# Methods outside this set are counted as "other": a client cannot invent label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ENDPOINT = "unmatched"  # 404/405 from routing: no route template to name
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
            buckets=LATENCY_BUCKETS,
        )
        self.ingested = Counter(
            "polymicro_ingested_items",
            "Items stored through the API, by kind (logs, cpu_points).",
            ["kind"],
        )
        for kind in INGEST_KINDS:
            self.ingested.labels(kind=kind)  # present (at 0) before the first write
        # (endpoint, method, status code) -> (requests child, latency child)
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one request and time it (``method`` already one of METHODS or other)."""
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            code = str(status)
            children = self._children.setdefault(
                key,
                (
                    self.requests.labels(endpoint, method, code),
                    self.latency.labels(endpoint, method, code),
                ),
            )
        children[0].inc()
        children[1].observe(seconds)


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


class _RetentionCollector:
    """Gauges computed at scrape from ``polymicro.common.retention.status()`` (one
    indexed query per kind; left out, with a log line, when the database fails)."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from polymicro.common import retention

        try:
            report = retention.status()
        except Exception:
            logging.getLogger(__name__).warning("retention gauges left out", exc_info=True)
            return
        setting = GaugeMetricFamily(
            "polymicro_retention_days", "Retention setting in days (0: forever).", labels=["kind"]
        )
        index = GaugeMetricFamily(
            "polymicro_retention_index_days",
            "What the TTL index says, in days (0: no TTL index).",
            labels=["kind"],
        )
        oldest = GaugeMetricFamily(
            "polymicro_retention_oldest_timestamp_seconds",
            "Unix time of the oldest stored row (absent: none).",
            labels=["kind"],
        )
        behind = GaugeMetricFamily(
            "polymicro_retention_behind",
            "1 when rows older than the horizon plus the margin are still stored.",
            labels=["kind"],
        )
        for entry in report:
            kind = [entry["kind"]]
            setting.add_metric(kind, entry["days"])
            index.add_metric(kind, entry["index_days"] or 0)
            if entry["oldest"] is not None:
                oldest.add_metric(kind, entry["oldest"].replace(tzinfo=UTC).timestamp())
            behind.add_metric(kind, 1 if entry["behind"] else 0)
        yield from (setting, index, oldest, behind)


def retention_metrics() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RetentionCollector())
    return generate_latest(registry)


def metrics_view() -> Response:
    return Response(
        generate_latest(metrics_registry()) + retention_metrics(),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )
