"""Proof with real clients: the OpenTelemetry SDK (a Python ``logging`` handler, the
metrics exporter and the system-metrics instrumentation, over OTLP/HTTP protobuf) and a
maintained Loki handler (loki-logger-handler, JSON + gzip) send to a real HTTP server
(werkzeug, in a thread, on a free port); the entries are read back through /api as an
admin, field by field.  (The Python SDK's OTLP/HTTP exporter speaks protobuf only; the
JSON encoding is covered in test_ingest_otlp_api.py.)
"""

from __future__ import annotations

import json
import logging
import threading

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from werkzeug.serving import make_server

from tests.conftest import free_port
from tests.ingest_helpers import make_tenant, project_logs, project_metrics, project_services

HOUR_MS = 3_600_000
# The SDK's LoggingHandler still works; its deprecation points at another package.
pytestmark = pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")


@pytest.fixture
def server(app):
    """The app on 127.0.0.1:<free port>, one request at a time (mongomock is not
    thread-safe); stopped after the test."""
    port = free_port()
    httpd = make_server("127.0.0.1", port, app, threaded=False)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def tenant(ctx):
    return make_tenant("shop")


def _otel_logger(provider: LoggerProvider, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def test_python_logging_through_the_sdk_with_env_settings(app, client, server, tenant, monkeypatch):
    """OTEL_EXPORTER_OTLP_ENDPOINT=<base>/otlp and the key in OTEL_EXPORTER_OTLP_HEADERS,
    as a service would be configured; batches gzip-compressed."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"{server}/otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-api-key={tenant.key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    logger = _otel_logger(provider, "shop.checkout")
    tracer = TracerProvider().get_tracer("shop")

    def charge_card():
        with tracer.start_as_current_span("charge") as span:
            logger.error("card %s declined", "4242", extra={"test_id": "t-7", "order.id": 991})
            return span.get_span_context()

    context = charge_card()
    logger.info("checkout started")
    logger.debug("cart has %d items", 3)
    try:
        raise ValueError("no stock")
    except ValueError:
        logger.exception("reservation failed")
    assert provider.force_flush(10_000)
    provider.shutdown()

    entries = {e["message"].split("\n")[0]: e for e in project_logs(client, tenant.project.id)}
    assert set(entries) == {
        "card 4242 declined",
        "checkout started",
        "cart has 3 items",
        "reservation failed",
    }
    svc = project_services(client, tenant.project.id)["checkout"]
    assert svc["discovered"] is True
    declined = entries["card 4242 declined"]
    assert declined["service_id"] == svc["id"]
    assert declined["severity"] == "error"
    assert declined["func_id"] == "charge_card"
    assert declined["test_id"] == "t-7"
    attributes = declined["attributes"]
    assert attributes["trace_id"] == format(context.trace_id, "032x")
    assert attributes["span_id"] == format(context.span_id, "016x")
    assert attributes["scope_name"] == "shop.checkout"
    assert attributes["order_id"] == 991
    assert attributes["code_file_path"].endswith("test_ingest_clients.py")
    assert isinstance(attributes["code_line_number"], int)
    assert entries["checkout started"]["severity"] == "info"
    assert entries["cart has 3 items"]["severity"] == "debug"
    failed = entries["reservation failed"]
    assert failed["severity"] == "error"
    assert "ValueError: no stock" in failed["message"]  # the stacktrace joins the message
    assert failed["attributes"]["exception_type"] == "ValueError"


def test_many_records_in_batches_of_512(app, client, server, tenant):
    exporter = OTLPLogExporter(
        endpoint=f"{server}/otlp/v1/logs",
        headers={"X-API-Key": tenant.key},
        compression=Compression.Gzip,
    )
    provider = LoggerProvider(resource=Resource.create({"service.name": "bulk"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_export_batch_size=512, max_queue_size=4096)
    )
    logger = _otel_logger(provider, "shop.bulk")
    for i in range(1500):
        logger.warning("event %d", i)
    assert provider.force_flush(30_000)
    provider.shutdown()
    response = client.get(f"/api/logs/project/{tenant.project.id}?page_size=1")
    assert json.loads(response.headers["X-Pagination"])["total"] == 1500


def test_a_wrong_key_stores_nothing_and_the_sdk_reports_failure(app, client, server, tenant):
    exporter = OTLPLogExporter(
        endpoint=f"{server}/otlp/v1/logs", headers={"X-API-Key": "pmk_0123456789ab_wrong"}
    )
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    results = []
    real_export = exporter.export
    exporter.export = lambda batch: results.append(real_export(batch)) or results[-1]
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    _otel_logger(provider, "shop.wrong").error("nope")
    provider.shutdown()
    assert [r.name for r in results] == ["FAILURE"]
    assert project_logs(client, tenant.project.id) == []


def test_metrics_exporter_with_observable_instruments(app, client, server, tenant):
    exporter = OTLPMetricExporter(
        endpoint=f"{server}/otlp/v1/metrics", headers={"X-API-Key": tenant.key}
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=HOUR_MS)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "api"})
    )
    meter = provider.get_meter("shop.metrics")
    meter.create_observable_gauge(
        "process.runtime.cpython.cpu.utilization", callbacks=[lambda _: [Observation(0.375)]]
    )
    meter.create_observable_gauge(
        "process.memory.utilization", callbacks=[lambda _: [Observation(0.25)]]
    )
    meter.create_observable_up_down_counter(
        "process.runtime.cpython.thread_count", callbacks=[lambda _: [Observation(9)]]
    )
    meter.create_counter("http.server.requests").add(5)
    reader.force_flush(10_000)
    provider.shutdown()

    points = project_metrics(client, tenant.project.id)["api"]["data"]
    assert len(points) == 2  # one per collection: force_flush, then shutdown
    for point in points:
        assert point["load"] == pytest.approx(37.5)
        assert point["memory"] == pytest.approx(25.0)
        assert point["threads"] == 9
    assert project_services(client, tenant.project.id)["api"]["discovered"] is True


def test_system_metrics_instrumentation(app, client, server, tenant):
    """What OpenTelemetry's system-metrics instrumentation really emits (psutil)."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    exporter = OTLPMetricExporter(
        endpoint=f"{server}/otlp/v1/metrics", headers={"X-API-Key": tenant.key}
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=HOUR_MS)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "worker"})
    )
    config = {
        "process.runtime.cpu.utilization": None,
        "process.runtime.thread_count": None,
        "process.runtime.memory": ["rss", "vms"],
        "system.memory.utilization": ["used", "free", "cached"],
        "system.cpu.utilization": ["idle", "user", "system", "irq"],
        "process.runtime.gc_count": None,
    }
    instrumentor = SystemMetricsInstrumentor(config=config)
    instrumentor.instrument(meter_provider=provider)
    try:
        reader.force_flush(10_000)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    points = project_metrics(client, tenant.project.id)["worker"]["data"]
    assert len(points) == 2  # one per collection: force_flush, then shutdown
    for point in points:
        assert point["load"] >= 0
        assert 0 < point["memory"] <= 100  # system.memory.utilization{state=used}
        assert point["threads"] >= 2  # this test's thread and the server's


def test_loki_logger_handler(app, client, server, tenant):
    """loki-logger-handler (JSON, gzip, structured metadata) against /loki/api/v1/push."""
    from loki_logger_handler.loki_logger_handler import LokiLoggerHandler

    handler = LokiLoggerHandler(
        url=f"{server}/loki/api/v1/push",
        labels={"application": "billing", "env": "prod"},
        label_keys=["level"],
        additional_headers={"X-API-Key": tenant.key},
        timeout=3600,  # no timed flush: the test sends explicitly
        compressed=True,
        enable_structured_loki_metadata=True,
        loki_metadata={"region": "eu-west"},
        enable_self_errors=True,
    )
    logger = logging.getLogger("billing.loki")
    logger.handlers.clear()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    app.config["INGEST_LOKI_SERVICE_LABELS"] = "service_name,service,app,application,job"
    logger.warning("invoice %s overdue", "INV-1", extra={"loki_metadata": {"test_id": "t-3"}})
    logger.info("invoice sent")
    handler._send()  # the handler's own flush, run now instead of on its timer
    logger.removeHandler(handler)

    entries = {
        json.loads(e["message"])["message"]: e for e in project_logs(client, tenant.project.id)
    }
    assert set(entries) == {"invoice INV-1 overdue", "invoice sent"}
    assert set(project_services(client, tenant.project.id)) == {"billing"}
    overdue = entries["invoice INV-1 overdue"]
    assert overdue["severity"] == "warn"
    assert overdue["test_id"] == "t-3"
    assert overdue["attributes"] == {"env": "prod", "region": "eu-west"}
    line = json.loads(overdue["message"])
    assert line["function"] == "test_loki_logger_handler"
    assert entries["invoice sent"]["severity"] == "info"
