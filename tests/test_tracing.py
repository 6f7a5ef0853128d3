"""OpenTelemetry tracing (polymicro/observability/tracing.py).

Spans are captured with the SDK's in-memory exporter.  pymongo spans come from pymongo's
command listener, which mongomock never calls, so these tests use a real wire-protocol
database: the session's SecantusDB on a wire run, else one started for this module.
The tracer provider is process-wide (OpenTelemetry sets it once): each traced test
starts tracing with the one in-memory exporter of this module and stops it after, so
the other tests run untraced.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mongoengine
import pytest
import redis
from bson import ObjectId
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from polymicro import create_app
from polymicro.common import caching
from polymicro.config import TestingConfig
from polymicro.extensions import cache, close_db
from polymicro.observability import logs, tracing
from tests.conftest import INSTANCE_DIR, client_as, free_port
from tests.test_observability import LIVE, gunicorn, stderr_lines

OTLP_ENDPOINT = "http://127.0.0.1:9"  # never contacted: the in-memory exporter is used


MEMORY = InMemorySpanExporter()
PROCESSOR = SimpleSpanProcessor(MEMORY)


@pytest.fixture
def exporter(monkeypatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", OTLP_ENDPOINT)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    try:
        assert tracing.start_tracing(span_processor=PROCESSOR)
        MEMORY.clear()
        yield MEMORY
    finally:
        tracing.stop_tracing()


def _empty_database() -> None:
    db = mongoengine.get_db()
    for name in db.list_collection_names():
        if not name.startswith("system."):
            db[name].delete_many({})


@pytest.fixture
def traced_app(exporter, wire_uri, redis_url):
    config = {key: getattr(TestingConfig, key) for key in dir(TestingConfig) if key.isupper()}
    config.update(
        INSTANCE_PATH=INSTANCE_DIR,
        MONGODB_URI=wire_uri,
        MONGODB_MOCK=False,
        MONGODB_TIMEOUT_MS=5000,
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        REDIS_URL=redis_url or "",
    )
    app = create_app(config)
    caching.reset_state()
    with app.app_context():
        cache.clear()
        _empty_database()
    exporter.clear()
    yield app
    with app.app_context():
        _empty_database()
    close_db()
    app.config["LOG_FORMAT"] = "text"
    logs.configure_logging(app)  # the next tests expect the default format


def _hex(trace_id: int) -> str:
    return trace.format_trace_id(trace_id)


def _server_span(spans):
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    return server


def test_a_request_gives_a_server_span_with_pymongo_children_and_its_log_carries_the_ids(
    traced_app, exporter, capsys
):
    client = client_as(traced_app, "admin")
    capsys.readouterr()
    missing = ObjectId()
    response = client.get(f"/api/projects/{missing}", headers={"X-Request-ID": "trace-1"})
    records = [json.loads(line) for line in stderr_lines(capsys)]
    spans = exporter.get_finished_spans()

    assert response.status_code == 404
    server = _server_span(spans)
    assert server.name == "GET /api/projects/<objectid:project_id>"
    assert server.attributes["http.route"] == "/api/projects/<objectid:project_id>"
    assert server.attributes["http.status_code"] == 404
    assert server.attributes["polymicro.request_id"] == "trace-1"
    assert server.resource.attributes["service.name"] == "polymicro"
    mongo = [s for s in spans if s.attributes.get("db.system") == "mongodb"]
    assert mongo, [s.name for s in spans]
    for span in mongo:
        assert span.kind == SpanKind.CLIENT
        assert span.parent.span_id == server.context.span_id
        assert span.context.trace_id == server.context.trace_id
    assert any(s.attributes.get("db.mongodb.collection") == "projects" for s in mongo)

    [access] = [r for r in records if r["logger"] == "polymicro.access"]
    assert access["request_id"] == "trace-1"
    assert access["trace_id"] == _hex(server.context.trace_id)
    assert access["span_id"] == trace.format_span_id(server.context.span_id)
    assert access["path"] == f"/api/projects/{missing}"
    assert response.headers["X-Request-ID"] == "trace-1"


def test_an_answer_from_an_earlier_hook_has_a_span_and_a_traced_log_line(
    traced_app, exporter, capsys
):
    client = client_as(traced_app, "admin")
    capsys.readouterr()
    response = client.post(
        "/api/projects", data="x", content_type="text/plain", headers={"X-Request-ID": "415-1"}
    )
    records = [json.loads(line) for line in stderr_lines(capsys)]

    assert response.status_code == 415  # the JSON-body guard, a before_request hook
    server = _server_span(exporter.get_finished_spans())
    assert server.attributes["http.status_code"] == 415
    assert server.attributes["polymicro.request_id"] == "415-1"
    [access] = [r for r in records if r["logger"] == "polymicro.access"]
    assert access["trace_id"] == _hex(server.context.trace_id)


def test_an_escaping_exception_is_logged_inside_its_span(traced_app, exporter, capsys):
    @traced_app.route("/boom")
    def boom():
        raise RuntimeError("boom")

    capsys.readouterr()
    with pytest.raises(RuntimeError):  # TESTING propagates it: no after_request ran
        traced_app.test_client().get("/boom", headers={"X-Request-ID": "boom-2"})
    records = [json.loads(line) for line in stderr_lines(capsys)]

    server = _server_span(exporter.get_finished_spans())
    assert server.status.status_code == StatusCode.ERROR
    [access] = [r for r in records if r["logger"] == "polymicro.access"]
    assert (access["status"], access["request_id"]) == (500, "boom-2")
    assert access["trace_id"] == _hex(server.context.trace_id)


def test_a_log_line_outside_a_request_has_no_trace_id(traced_app, capsys):
    capsys.readouterr()
    traced_app.logger.warning("between requests")
    [record] = [json.loads(line) for line in stderr_lines(capsys)]

    assert record["request_id"] == "-"
    assert "trace_id" not in record
    assert "span_id" not in record


def test_redis_commands_make_client_spans(exporter):
    exporter.clear()
    tracer = trace.get_tracer("tests")
    nobody = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    with tracer.start_as_current_span("parent") as parent, pytest.raises(redis.ConnectionError):
        nobody.get("some-key")
    spans = exporter.get_finished_spans()

    [command] = [s for s in spans if s.attributes.get("db.system") == "redis"]
    assert command.name == "GET"
    assert command.kind == SpanKind.CLIENT
    assert command.parent.span_id == parent.get_span_context().span_id
    assert command.status.status_code == StatusCode.ERROR


# --- off unless configured --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "configured"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_configured_only_by_an_otlp_endpoint(monkeypatch, env, configured):
    for name in (*tracing.ENDPOINT_VARIABLES, "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.tracing_configured() is configured


def test_without_an_endpoint_nothing_is_traced(monkeypatch, app, capsys):
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hooks = [
        f
        for funcs in (app.before_request_funcs[None], app.teardown_request_funcs[None])
        for f in funcs
    ]

    assert app.extensions["polymicro.tracing"] is False
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert not any(tracing.is_flask_instrumentation_hook(f) for f in hooks)
    assert logs.trace_ids is None
    capsys.readouterr()
    app.config["LOG_FORMAT"] = "json"
    logs.configure_logging(app)
    try:
        app.test_client().get(LIVE)
        [access] = [json.loads(line) for line in stderr_lines(capsys)]
    finally:
        app.config["LOG_FORMAT"] = "text"
        logs.configure_logging(app)
    assert "trace_id" not in access


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "polymicro"),
        ({"OTEL_SERVICE_NAME": "polymicro-eu"}, "polymicro-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=api,deployment.environment=prod"}, "api"),
    ],
)
def test_the_service_name_defaults_to_polymicro(monkeypatch, env, name):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert tracing._resource().attributes["service.name"] == name


# --- under gunicorn: spans leave each worker over OTLP/HTTP ------------------------------


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps every span it is sent, with its resource."""

    received: list  # (resource attributes, span) pairs, set on the server class below

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.server.received.append((resource, span))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args) -> None:
        pass


def test_gunicorn_workers_export_their_spans_over_otlp_http(tmp_path):
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    collector.received = []
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    try:
        with gunicorn(
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",  # ms between exports (default 5 s)
            OTEL_SERVICE_NAME="polymicro-under-test",
        ) as (base, log_path):
            ids = [f"gw-{i}" for i in range(4)]
            for request_id in ids:
                headers = {"X-Request-ID": request_id}
                request = urllib.request.Request(base + LIVE, headers=headers)  # noqa: S310
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                    assert response.status == 200
            deadline = time.monotonic() + 15
            while True:  # the batch processor exports on its own schedule
                seen = {
                    attr.value.string_value
                    for _resource, span in collector.received
                    for attr in span.attributes
                    if attr.key == "polymicro.request_id"
                }
                if set(ids) <= seen:
                    break
                assert time.monotonic() < deadline, (seen, log_path.read_text())
                time.sleep(0.05)
    finally:
        collector.shutdown()
        collector.server_close()

    traced = [
        (resource, span)
        for resource, span in collector.received
        if any(a.key == "polymicro.request_id" for a in span.attributes)
    ]
    assert {resource["service.name"] for resource, _ in traced} == {"polymicro-under-test"}
    assert {span.name for _, span in traced} == {f"GET {LIVE}"}
