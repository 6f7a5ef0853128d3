"""OTLP/HTTP logs and metrics through the HTTP API (auth on), with requests built from the
opentelemetry-proto message classes; read back through /api as an admin."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from polymicro.logs.models import LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint
from polymicro.services.models import Service
from tests.factories import make_service
from tests.ingest_helpers import (
    PROTOBUF,
    logs_request,
    make_tenant,
    metrics_request,
    now_ns,
    post_protobuf,
    project_logs,
    project_metrics,
    project_services,
)

LOGS = "/otlp/v1/logs"
METRICS = "/otlp/v1/metrics"


@pytest.fixture
def tenant(ctx):
    return make_tenant("shop")


def logs_answer(response) -> ExportLogsServiceResponse:
    assert response.status_code == 200, response.data
    assert response.mimetype == PROTOBUF
    return ExportLogsServiceResponse.FromString(response.data)


def status_of(response) -> status_pb2.Status:
    assert response.mimetype == PROTOBUF
    return status_pb2.Status.FromString(response.data)


class TestLogMapping:
    def test_every_field_of_a_record_reaches_the_entry(self, app, client, tenant):
        stamp = now_ns() - 5_000_000_000
        request = logs_request(
            (
                "checkout",
                [
                    {
                        "body": "payment failed",
                        "severity_number": 17,
                        "severity_text": "ERROR",
                        "time_unix_nano": stamp,
                        "trace_id": bytes.fromhex("5b8efff798038103d269b633813fc60c"),
                        "span_id": bytes.fromhex("eee19b7ec3c1b174"),
                        "scope": "shop.payments",
                        "attributes": {
                            "code.function.name": "charge_card",
                            "test_id": "t-42",
                            "source": "worker-3",
                            "http.request.method": "POST",
                            "retries": 3,
                            "ratio": 0.5,
                            "ok": False,
                            "tags": ["a", "b"],
                        },
                    }
                ],
            )
        )
        answer = logs_answer(post_protobuf(app.test_client(), LOGS, request, tenant))
        assert not answer.HasField("partial_success")
        (entry,) = project_logs(client, tenant.project.id)
        svc = project_services(client, tenant.project.id)["checkout"]
        assert entry["service_id"] == svc["id"]
        assert entry["project_id"] == str(tenant.project.id)
        assert entry["severity"] == "error"
        assert entry["message"] == "payment failed"
        stored_ms = stamp // 1_000_000
        assert entry["timestamp"].endswith(f".{stored_ms % 1000:03d}Z")
        assert entry["func_id"] == "charge_card"
        assert entry["test_id"] == "t-42"
        assert entry["source"] == "worker-3"
        assert entry["attributes"] == {
            "trace_id": "5b8efff798038103d269b633813fc60c",
            "span_id": "eee19b7ec3c1b174",
            "scope_name": "shop.payments",
            "http_request_method": "POST",
            "retries": 3,
            "ratio": 0.5,
            "ok": False,
            "tags": '["a", "b"]',
        }

    @pytest.mark.parametrize(
        ("number", "text", "expected"),
        [
            (1, "", "debug"),
            (8, "", "debug"),
            (9, "", "info"),
            (12, "", "info"),
            (13, "", "warn"),
            (16, "", "warn"),
            (17, "", "error"),
            (20, "", "error"),
            (21, "", "critical"),
            (24, "", "critical"),
            (0, "WARNING", "warn"),
            (0, "fatal", "critical"),
            (0, "Err", "error"),
            (0, "trace", "debug"),
            (0, "whatever", "info"),
            (0, "", "info"),
            (9, "ERROR", "info"),  # the number wins over the text
        ],
    )
    def test_severity(self, app, client, tenant, number, text, expected):
        record = {"body": "x", "severity_number": number, "severity_text": text}
        logs_answer(post_protobuf(app.test_client(), LOGS, logs_request(("a", [record])), tenant))
        assert project_logs(client, tenant.project.id)[0]["severity"] == expected

    def test_time_falls_back_to_observed_then_arrival(self, app, client, tenant):
        observed = now_ns() - 60_000_000_000
        records = [
            {"body": "observed", "observed_time_unix_nano": observed},
            {"body": "arrival"},
        ]
        before = now_ns() // 1_000_000
        logs_answer(post_protobuf(app.test_client(), LOGS, logs_request(("a", records)), tenant))
        after = now_ns() // 1_000_000
        stored = {e["message"]: e for e in project_logs(client, tenant.project.id)}
        with app.app_context():
            times = {e.message: e.timestamp for e in LogEntry.objects}
        from datetime import datetime

        epoch = datetime(1970, 1, 1)

        def ms(value):
            return int((value - epoch).total_seconds() * 1000)

        assert ms(times["observed"]) == observed // 1_000_000
        assert before <= ms(times["arrival"]) <= after
        assert set(stored) == {"observed", "arrival"}

    def test_structured_body_event_name_and_stacktrace(self, app, client, tenant):
        records = [
            {"body": {"user": "ann", "n": 2}},
            {"event_name": "cart.checked_out"},
            {"body": "crash", "attributes": {"exception.stacktrace": "Traceback: boom"}},
        ]
        logs_answer(post_protobuf(app.test_client(), LOGS, logs_request(("a", records)), tenant))
        messages = {e["message"] for e in project_logs(client, tenant.project.id)}
        assert messages == {'{"user": "ann", "n": 2}', "cart.checked_out", "crash\nTraceback: boom"}

    def test_without_service_name_the_service_is_unknown_service(self, app, client, tenant):
        logs_answer(
            post_protobuf(app.test_client(), LOGS, logs_request((None, [{"body": "x"}])), tenant)
        )
        assert set(project_services(client, tenant.project.id)) == {"unknown_service"}

    def test_long_values_are_cut_and_the_answer_says_so(self, app, client, tenant):
        record = {
            "body": "m" * 20_000,
            "attributes": {"long": "v" * 2_000, **{f"k{i}": i for i in range(40)}},
        }
        answer = logs_answer(
            post_protobuf(app.test_client(), LOGS, logs_request(("a", [record])), tenant)
        )
        assert answer.partial_success.rejected_log_records == 0
        message = answer.partial_success.error_message
        assert "messages cut to 16384 characters (1)" in message
        assert "attribute values cut to 1024 characters (1)" in message
        assert "attributes beyond 32 dropped (9)" in message
        (entry,) = project_logs(client, tenant.project.id)
        assert len(entry["message"]) == 16384
        assert len(entry["attributes"]) == 32
        assert len(entry["attributes"]["long"]) == 1024


class TestServices:
    def test_a_new_service_is_registered_as_discovered(self, app, client, tenant):
        with app.app_context():
            make_service(tenant.project, name="Known")
        request = logs_request(("known", [{"body": "a"}]), ("fresh", [{"body": "b"}]))
        logs_answer(post_protobuf(app.test_client(), LOGS, request, tenant))
        services = project_services(client, tenant.project.id)
        assert set(services) == {"Known", "fresh"}
        assert services["fresh"]["discovered"] is True
        assert services["Known"]["discovered"] is False
        project = client.get(f"/api/projects/{tenant.project.id}").json
        assert {s["name"] for s in project["microservices"]} == {"Known", "fresh"}

    def test_auto_registration_off_rejects_the_records_of_new_services(self, app, client, tenant):
        app.config["INGEST_AUTO_REGISTER"] = False
        with app.app_context():
            make_service(tenant.project, name="known")
        request = logs_request(
            ("known", [{"body": "a"}]), ("fresh", [{"body": "b"}, {"body": "c"}])
        )
        answer = logs_answer(post_protobuf(app.test_client(), LOGS, request, tenant))
        assert answer.partial_success.rejected_log_records == 2
        assert "service 'fresh' is not in this project" in answer.partial_success.error_message
        assert [e["message"] for e in project_logs(client, tenant.project.id)] == ["a"]
        assert set(project_services(client, tenant.project.id)) == {"known"}

    def test_an_invalid_service_name_rejects_its_records(self, app, client, tenant):
        request = logs_request(("bad\nname", [{"body": "a"}]), ("x" * 101, [{"body": "b"}]))
        answer = logs_answer(post_protobuf(app.test_client(), LOGS, request, tenant))
        assert answer.partial_success.rejected_log_records == 2
        assert project_logs(client, tenant.project.id) == []
        assert project_services(client, tenant.project.id) == {}


class TestEncodings:
    def test_otlp_json_with_hex_ids_string_int64_and_enum_ints(self, app, client, tenant):
        stamp = now_ns()
        body = {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]
                    },
                    "scopeLogs": [
                        {
                            "scope": {"name": "web.http"},
                            "logRecords": [
                                {
                                    "timeUnixNano": str(stamp),
                                    "severityNumber": 13,
                                    "body": {"stringValue": "slow request"},
                                    "traceId": "5b8efff798038103d269b633813fc60c",
                                    "spanId": "eee19b7ec3c1b174",
                                    "attributes": [
                                        {"key": "http.status", "value": {"intValue": "504"}}
                                    ],
                                    "someFutureField": True,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
        response = app.test_client().post(LOGS, json=body, headers=tenant.headers)
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        assert response.json == {}
        (entry,) = project_logs(client, tenant.project.id)
        assert entry["severity"] == "warn"
        assert entry["message"] == "slow request"
        assert entry["attributes"] == {
            "trace_id": "5b8efff798038103d269b633813fc60c",
            "span_id": "eee19b7ec3c1b174",
            "scope_name": "web.http",
            "http_status": 504,
        }

    def test_json_partial_success_is_json(self, app, tenant):
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": 9}]}]}]}
        response = app.test_client().post(LOGS, json=body, headers=tenant.headers)
        assert response.status_code == 200
        assert response.json["partialSuccess"]["rejectedLogRecords"] in (1, "1")
        assert "empty body" in response.json["partialSuccess"]["errorMessage"]

    @pytest.mark.parametrize("coding", ["gzip", "deflate"])
    def test_compressed_bodies(self, app, client, tenant, coding):
        data = logs_request(("a", [{"body": "zipped"}])).SerializeToString()
        packed = gzip.compress(data) if coding == "gzip" else zlib.compress(data)
        response = app.test_client().post(
            LOGS,
            data=packed,
            headers={"Content-Type": PROTOBUF, "Content-Encoding": coding, **tenant.headers},
        )
        logs_answer(response)
        assert [e["message"] for e in project_logs(client, tenant.project.id)] == ["zipped"]


def _assert_nothing_stored(app):
    with app.app_context():
        assert LogEntry.objects.count() == 0
        assert Service.objects.count() == 0
        assert CpuPoint.objects.count() == 0


class TestHostile:
    def test_truncated_protobuf_is_400_with_a_status(self, app, tenant):
        data = logs_request(("a", [{"body": "x" * 50}])).SerializeToString()
        response = app.test_client().post(
            LOGS, data=data[:-7], headers={"Content-Type": PROTOBUF, **tenant.headers}
        )
        assert response.status_code == 400
        assert "not a valid ExportLogsServiceRequest" in status_of(response).message
        _assert_nothing_stored(app)

    def test_gzip_bomb_is_413_without_inflating_it_all(self, app, tenant, monkeypatch):
        app.config["INGEST_MAX_BODY_BYTES"] = 1 << 20
        bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in about 64 KiB
        inflated = []
        real = zlib.decompressobj

        class Counting:
            def __init__(self, *args):
                self._inner = real(*args)

            def decompress(self, data, max_length=0):
                out = self._inner.decompress(data, max_length)
                inflated.append(len(out))
                return out

            def __getattr__(self, name):
                return getattr(self._inner, name)

        monkeypatch.setattr("polymicro.ingest.body.zlib.decompressobj", Counting)
        response = app.test_client().post(
            LOGS,
            data=bomb,
            headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip", **tenant.headers},
        )
        assert response.status_code == 413
        assert "larger than 1048576 bytes once decompressed" in status_of(response).message
        assert sum(inflated) <= (1 << 20) + 1
        _assert_nothing_stored(app)

    @pytest.mark.parametrize(
        ("data", "headers", "code"),
        [
            (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400),
            (gzip.compress(b"abc")[:-4], {"Content-Encoding": "gzip"}, 400),
            (b"x", {"Content-Encoding": "br"}, 415),
        ],
        ids=["corrupt-gzip", "truncated-gzip", "brotli"],
    )
    def test_bad_content_coding(self, app, tenant, data, headers, code):
        response = app.test_client().post(
            LOGS, data=data, headers={"Content-Type": PROTOBUF, **headers, **tenant.headers}
        )
        assert response.status_code == code
        _assert_nothing_stored(app)

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/octet-stream", "application/grpc", None]
    )
    def test_other_media_types_are_415(self, app, tenant, content_type):
        headers = dict(tenant.headers)
        if content_type:
            headers["Content-Type"] = content_type
        response = app.test_client().post(LOGS, data=b"\x0a\x00", headers=headers)
        assert response.status_code == 415
        assert "application/x-protobuf or application/json" in response.json["message"]

    @pytest.mark.parametrize(
        "data",
        [b"\xff\xfe{not utf-8}", b'{"resourceLogs": [', b"[1, 2]", b'{"resourceLogs": 5}'],
        ids=["not-utf8", "truncated-json", "not-an-object", "wrong-type"],
    )
    def test_undecodable_json_is_400(self, app, tenant, data):
        response = app.test_client().post(
            LOGS, data=data, headers={"Content-Type": "application/json", **tenant.headers}
        )
        assert response.status_code == 400
        assert response.json["code"] == 400
        _assert_nothing_stored(app)

    def test_non_utf8_text_in_protobuf_is_400(self, app, tenant):
        data = logs_request(("a", [{"body": "h\u00e9llo"}])).SerializeToString()
        bad = data.replace("h\u00e9llo".encode(), b"h\xff\xfello")
        response = app.test_client().post(
            LOGS, data=bad, headers={"Content-Type": PROTOBUF, **tenant.headers}
        )
        assert response.status_code == 400
        assert "UTF-8" in status_of(response).message
        _assert_nothing_stored(app)

    def test_a_raw_body_over_max_content_length_is_413(self, app, tenant):
        app.config["MAX_CONTENT_LENGTH"] = 1000
        data = logs_request(("a", [{"body": "x" * 2000}])).SerializeToString()
        response = app.test_client().post(
            LOGS, data=data, headers={"Content-Type": PROTOBUF, **tenant.headers}
        )
        assert response.status_code == 413
        assert status_of(response).code == 413
        _assert_nothing_stored(app)

    def test_ingest_paths_are_not_in_the_openapi_document(self, app):
        paths = app.test_client().get("/openapi.json").json["paths"]
        assert not [p for p in paths if p.startswith(("/otlp", "/loki"))]

    def test_bad_hex_trace_id_in_json_is_400(self, app, tenant):
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}
        response = app.test_client().post(LOGS, json=body, headers=tenant.headers)
        assert response.status_code == 400
        assert "not hexadecimal" in response.json["message"]

    def test_wrong_key_is_401_and_stores_nothing(self, app, tenant):
        response = post_protobuf(
            app.test_client(),
            LOGS,
            logs_request(("a", [{"body": "x"}])),
            type(tenant)(tenant.project, "pmk_0123456789ab_made-up"),
        )
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        _assert_nothing_stored(app)

    def test_no_credentials_is_401(self, app):
        response = app.test_client().post(LOGS, data=b"", headers={"Content-Type": PROTOBUF})
        assert response.status_code == 401

    @pytest.mark.parametrize("role", ["editor", "admin"])
    def test_a_user_token_is_403_it_names_no_project(self, app, role):
        from tests.conftest import client_as

        response = client_as(app, role).post(LOGS, json={"resourceLogs": []})
        assert response.status_code == 403
        assert "project API key" in response.json["message"]

    def test_viewer_token_is_403(self, app):
        from tests.conftest import client_as

        assert client_as(app, "viewer").post(LOGS, json={}).status_code == 403

    def test_another_projects_key_writes_to_its_own_project_only(self, app, client, tenant):
        with app.app_context():
            other = make_tenant("other")
        request = logs_request(("api", [{"body": "mine"}]))
        logs_answer(post_protobuf(app.test_client(), LOGS, request, other))
        assert project_logs(client, tenant.project.id) == []
        assert project_services(client, tenant.project.id) == {}
        assert [e["message"] for e in project_logs(client, other.project.id)] == ["mine"]

    def test_ten_thousand_records_in_one_request(self, app, client, tenant):
        stamp = now_ns()
        records = [{"body": f"line {i}", "time_unix_nano": stamp + i} for i in range(10_000)]
        answer = logs_answer(
            post_protobuf(app.test_client(), LOGS, logs_request(("bulk", records)), tenant)
        )
        assert not answer.HasField("partial_success")
        with app.app_context():
            assert LogEntry.objects(project_id=tenant.project.id).count() == 10_000
            assert {e.message for e in LogEntry.objects.only("message")} == {
                f"line {i}" for i in range(10_000)
            }

    def test_more_records_than_the_cap_is_413(self, app, tenant):
        app.config["INGEST_MAX_RECORDS"] = 100
        records = [{"body": "x"}] * 101
        response = post_protobuf(app.test_client(), LOGS, logs_request(("a", records)), tenant)
        assert response.status_code == 413
        assert "at most 100" in status_of(response).message
        _assert_nothing_stored(app)

    @pytest.mark.parametrize(
        ("offset_s", "reason"),
        [
            (-8 * 24 * 3600, "older than"),
            (-100 * 365 * 24 * 3600, "older than"),
            (11 * 60, "too far in the future"),
            (None, "too far in the future"),
        ],
        ids=["8-days-ago", "a-century-ago", "11-minutes-ahead", "largest-fixed64"],
    )
    def test_timestamps_outside_the_window_are_rejected_per_record(
        self, app, client, tenant, offset_s, reason
    ):
        stamp = 2**64 - 1 if offset_s is None else max(now_ns() + offset_s * 10**9, 1)
        records = [{"body": "odd", "time_unix_nano": stamp}, {"body": "fine"}]
        answer = logs_answer(
            post_protobuf(app.test_client(), LOGS, logs_request(("a", records)), tenant)
        )
        assert answer.partial_success.rejected_log_records == 1
        assert reason in answer.partial_success.error_message
        assert [e["message"] for e in project_logs(client, tenant.project.id)] == ["fine"]

    def test_the_edges_of_the_window_are_accepted(self, app, client, tenant):
        stamp = now_ns()
        records = [
            {"body": "old", "time_unix_nano": stamp - (167 * 3600) * 10**9},
            {"body": "ahead", "time_unix_nano": stamp + 9 * 60 * 10**9},
        ]
        answer = logs_answer(
            post_protobuf(app.test_client(), LOGS, logs_request(("a", records)), tenant)
        )
        assert not answer.HasField("partial_success")
        assert len(project_logs(client, tenant.project.id)) == 2

    def test_database_down_is_503_with_retry_after(self, app, tenant, monkeypatch):
        from pymongo.errors import ServerSelectionTimeoutError

        def down(*args, **kwargs):
            raise ServerSelectionTimeoutError("down")

        monkeypatch.setattr("polymicro.logs.service.create_logs", down)
        response = post_protobuf(
            app.test_client(), LOGS, logs_request(("a", [{"body": "x"}])), tenant
        )
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "database is unavailable" in status_of(response).message

    @pytest.mark.parametrize(("wait", "header"), [(None, "5"), (2.2, "3")])
    def test_over_budget_is_429_with_retry_after(self, app, tenant, monkeypatch, wait, header):
        from polymicro.errors import DomainError

        class OverBudget(DomainError):
            code = 429

        def refuse(project_id, entries):
            error = OverBudget("Ingest budget of this project exceeded.")
            if wait is not None:
                error.retry_after = wait
            raise error

        monkeypatch.setattr("polymicro.ingest.service._charge", refuse)
        response = post_protobuf(
            app.test_client(), LOGS, logs_request(("a", [{"body": "x"}])), tenant
        )
        assert response.status_code == 429
        assert response.headers["Retry-After"] == header
        assert status_of(response).message == "Ingest budget of this project exceeded."
        _assert_nothing_stored(app)

    def test_an_unexpected_error_is_503_never_500(self, app, tenant, monkeypatch):
        def broken(*args, **kwargs):
            raise RuntimeError("bug")

        monkeypatch.setattr("polymicro.ingest.otlp.log_records", broken)
        response = app.test_client().post(LOGS, json={}, headers=tenant.headers)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "bug" not in response.json["message"]


class TestMetrics:
    def test_cpython_runtime_metrics_become_one_point(self, app, client, tenant):
        stamp = now_ns()
        request = metrics_request(
            "api",
            ("process.runtime.cpython.cpu.utilization", "gauge", [(1.5, stamp, {})]),
            ("process.memory.utilization", "gauge", [(0.125, stamp, {})]),
            ("process.runtime.cpython.thread_count", "sum", [(12, stamp, {})]),
            ("process.runtime.cpython.gc_count", "sum", [(3, stamp, {"count": "0"})]),
        )
        response = post_protobuf(app.test_client(), METRICS, request, tenant)
        assert response.status_code == 200
        answer = ExportMetricsServiceResponse.FromString(response.data)
        assert answer.partial_success.rejected_data_points == 0
        assert "does not chart, ignored (1)" in answer.partial_success.error_message
        (point,) = project_metrics(client, tenant.project.id)["api"]["data"]
        assert point["load"] == 150.0
        assert point["memory"] == 12.5
        assert point["threads"] == 12

    def test_semconv_process_metrics_with_states(self, app, client, tenant):
        stamp = now_ns()
        request = metrics_request(
            "api",
            (
                "process.cpu.utilization",
                "gauge",
                [(0.25, stamp, {"cpu.mode": "user"}), (0.05, stamp, {"cpu.mode": "system"})],
            ),
            ("process.thread.count", "sum", [(4, stamp, {})]),
            ("process.memory.usage", "sum", [(512 * 1024**2, stamp, {})]),
            ("system.memory.limit", "sum", [(2048 * 1024**2, stamp, {})]),
        )
        assert post_protobuf(app.test_client(), METRICS, request, tenant).status_code == 200
        (point,) = project_metrics(client, tenant.project.id)["api"]["data"]
        assert point["load"] == pytest.approx(30.0)
        assert point["memory"] == pytest.approx(25.0)
        assert point["threads"] == 4

    def test_system_cpu_is_busy_share_averaged_over_cpus(self, app, client, tenant):
        stamp = now_ns()
        points = [
            (0.6, stamp, {"cpu": 1, "state": "user"}),
            (0.4, stamp, {"cpu": 1, "state": "idle"}),
            (0.2, stamp, {"cpu": 2, "state": "user"}),
            (0.8, stamp, {"cpu": 2, "state": "idle"}),
        ]
        request = metrics_request(
            "host",
            ("system.cpu.utilization", "gauge", points),
            (
                "system.memory.utilization",
                "gauge",
                [(0.4, stamp, {"state": "used"}), (0.6, stamp, {"state": "free"})],
            ),
        )
        assert post_protobuf(app.test_client(), METRICS, request, tenant).status_code == 200
        (point,) = project_metrics(client, tenant.project.id)["host"]["data"]
        assert point["load"] == pytest.approx(40.0)
        assert point["memory"] == pytest.approx(40.0)
        assert point["threads"] is None

    def test_process_beats_system_and_timestamps_make_separate_points(self, app, client, tenant):
        t1 = now_ns() - 10_000_000_000
        t2 = t1 + 5_000_000_000
        request = metrics_request(
            "api",
            ("system.cpu.utilization", "gauge", [(0.9, t1, {"cpu": 1, "state": "user"})]),
            ("process.cpu.utilization", "gauge", [(0.1, t1, {}), (0.2, t2, {})]),
        )
        assert post_protobuf(app.test_client(), METRICS, request, tenant).status_code == 200
        loads = [p["load"] for p in project_metrics(client, tenant.project.id)["api"]["data"]]
        assert loads == [pytest.approx(10.0), pytest.approx(20.0)]

    def test_memory_or_threads_without_cpu_are_not_stored(self, app, client, tenant):
        stamp = now_ns()
        request = metrics_request(
            "api",
            ("process.thread.count", "sum", [(4, stamp, {})]),
            ("http.server.duration", "gauge", [(1.0, stamp, {})]),
        )
        response = post_protobuf(app.test_client(), METRICS, request, tenant)
        answer = ExportMetricsServiceResponse.FromString(response.data)
        assert answer.partial_success.rejected_data_points == 0
        assert "points without CPU utilization, not stored (1)" in (
            answer.partial_success.error_message
        )
        assert project_metrics(client, tenant.project.id) == {}

    def test_the_metrics_entry_is_reused(self, app, client, tenant):
        for offset in (2, 1):
            stamp = now_ns() - offset * 1_000_000_000
            request = metrics_request(
                "api", ("process.cpu.utilization", "gauge", [(0.5, stamp, {})])
            )
            assert post_protobuf(app.test_client(), METRICS, request, tenant).status_code == 200
        assert len(project_metrics(client, tenant.project.id)["api"]["data"]) == 2
        with app.app_context():
            assert CpuMetric.objects.count() == 1

    def test_metrics_json_and_window(self, app, client, tenant):
        stamp = now_ns()
        request = metrics_request(
            "api",
            (
                "process.cpu.utilization",
                "gauge",
                [(0.5, stamp, {}), (0.5, stamp - 30 * 24 * 3600 * 10**9, {})],
            ),
        )
        body = json.loads(json_format.MessageToJson(request))
        response = app.test_client().post(METRICS, json=body, headers=tenant.headers)
        assert response.status_code == 200
        assert response.json["partialSuccess"]["rejectedDataPoints"] in (1, "1")
        assert len(project_metrics(client, tenant.project.id)["api"]["data"]) == 1

    def test_auto_registration_off_rejects_points(self, app, client, tenant):
        app.config["INGEST_AUTO_REGISTER"] = False
        request = metrics_request(
            "api", ("process.cpu.utilization", "gauge", [(0.5, now_ns(), {})])
        )
        response = post_protobuf(app.test_client(), METRICS, request, tenant)
        answer = ExportMetricsServiceResponse.FromString(response.data)
        assert answer.partial_success.rejected_data_points == 1
        assert project_metrics(client, tenant.project.id) == {}

    def test_truncated_metrics_body_is_400(self, app, tenant):
        data = metrics_request(
            "api", ("process.cpu.utilization", "gauge", [(0.5, now_ns(), {})])
        ).SerializeToString()
        response = app.test_client().post(
            METRICS, data=data[:-3], headers={"Content-Type": PROTOBUF, **tenant.headers}
        )
        assert response.status_code == 400
        _assert_nothing_stored(app)
