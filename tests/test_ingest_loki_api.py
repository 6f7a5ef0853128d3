"""The Loki push API through HTTP (auth on): JSON, gzip, protobuf + snappy."""

from __future__ import annotations

import gzip

import cramjam
import pytest

from polymicro.ingest.loki import parse_labels, push_request_class
from polymicro.logs.models import LogEntry
from polymicro.services.models import Service
from tests.ingest_helpers import make_tenant, now_ns, project_logs, project_services

PUSH = "/loki/api/v1/push"


@pytest.fixture
def tenant(ctx):
    return make_tenant("shop")


def push_json(app, tenant, streams, **headers):
    return app.test_client().post(
        PUSH, json={"streams": streams}, headers={**tenant.headers, **headers}
    )


def snappy_push(streams) -> bytes:
    """A Loki protobuf push: ``streams`` is ``[(labels text, [(ns, line, metadata)])]``."""
    request = push_request_class()()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels)
        for stamp, line, metadata in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(stamp, 10**9)
            for name, value in metadata.items():
                entry.structuredMetadata.add(name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


class TestJson:
    def test_labels_metadata_and_level_map_field_by_field(self, app, client, tenant):
        stamp = now_ns() - 2_000_000_000
        streams = [
            {
                "stream": {"app": "billing", "level": "error", "env": "prod", "k8s.pod": "b-1"},
                "values": [
                    [str(stamp), "charge failed"],
                    [str(stamp + 1), "with metadata", {"trace_id": "abc", "test_id": "t-9"}],
                ],
            }
        ]
        response = push_json(app, tenant, streams)
        assert response.status_code == 204
        assert response.data == b""
        svc = project_services(client, tenant.project.id)["billing"]
        assert svc["discovered"] is True
        newest, oldest = project_logs(client, tenant.project.id)
        assert oldest["message"] == "charge failed"
        assert oldest["severity"] == "error"
        assert oldest["service_id"] == svc["id"]
        assert oldest["attributes"] == {"env": "prod", "k8s_pod": "b-1"}
        assert oldest["timestamp"].endswith(f".{(stamp // 1_000_000) % 1000:03d}Z")
        assert newest["message"] == "with metadata"
        assert newest["test_id"] == "t-9"
        assert newest["attributes"] == {"env": "prod", "k8s_pod": "b-1", "trace_id": "abc"}

    @pytest.mark.parametrize(
        ("labels", "service"),
        [
            ({"service_name": "a", "service": "b", "app": "c", "job": "d"}, "a"),
            ({"service": "b", "app": "c", "job": "d"}, "b"),
            ({"app": "c", "job": "d"}, "c"),
            ({"job": "d"}, "d"),
            ({"env": "prod"}, "unknown_service"),
        ],
    )
    def test_service_label_order(self, app, client, tenant, labels, service):
        assert (
            push_json(
                app, tenant, [{"stream": labels, "values": [[str(now_ns()), "x"]]}]
            ).status_code
            == 204
        )
        assert set(project_services(client, tenant.project.id)) == {service}

    def test_service_labels_are_configurable(self, app, client, tenant):
        app.config["INGEST_LOKI_SERVICE_LABELS"] = "component, app"
        streams = [{"stream": {"app": "c", "component": "z"}, "values": [[str(now_ns()), "x"]]}]
        assert push_json(app, tenant, streams).status_code == 204
        assert set(project_services(client, tenant.project.id)) == {"z"}
        assert project_logs(client, tenant.project.id)[0]["attributes"] == {"app": "c"}

    @pytest.mark.parametrize(
        ("stream", "metadata", "expected"),
        [
            ({"level": "warning"}, {}, "warn"),
            ({"severity": "CRITICAL"}, {}, "critical"),
            ({}, {"detected_level": "debug"}, "debug"),
            ({"level": "info"}, {"level": "error"}, "error"),
            ({}, {}, "info"),
        ],
    )
    def test_severity(self, app, client, tenant, stream, metadata, expected):
        streams = [{"stream": {"app": "a", **stream}, "values": [[str(now_ns()), "x", metadata]]}]
        assert push_json(app, tenant, streams).status_code == 204
        assert project_logs(client, tenant.project.id)[0]["severity"] == expected

    def test_gzip(self, app, client, tenant):
        import json

        body = json.dumps(
            {"streams": [{"stream": {"app": "a"}, "values": [[str(now_ns()), "zipped"]]}]}
        ).encode()
        response = app.test_client().post(
            PUSH,
            data=gzip.compress(body),
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                **tenant.headers,
            },
        )
        assert response.status_code == 204
        assert [e["message"] for e in project_logs(client, tenant.project.id)] == ["zipped"]

    def test_some_entries_refused_is_400_and_the_others_are_stored(self, app, client, tenant):
        streams = [
            {
                "stream": {"app": "a"},
                "values": [
                    [str(now_ns()), "kept"],
                    ["1", "ancient"],
                    [str(now_ns()), "   "],
                ],
            }
        ]
        response = push_json(app, tenant, streams)
        assert response.status_code == 400
        assert "2 of 3 entries were refused (the others were stored)" in response.json["message"]
        assert [e["message"] for e in project_logs(client, tenant.project.id)] == ["kept"]


class TestProtobuf:
    def test_snappy_protobuf_push(self, app, client, tenant):
        stamp = now_ns()
        data = snappy_push(
            [
                (
                    '{app="cart", level="warn", region="eu \\"west\\""}',
                    [(stamp, "low stock", {"sku": "A1"})],
                )
            ]
        )
        response = app.test_client().post(
            PUSH, data=data, headers={"Content-Type": "application/x-protobuf", **tenant.headers}
        )
        assert response.status_code == 204, response.json
        (entry,) = project_logs(client, tenant.project.id)
        assert entry["message"] == "low stock"
        assert entry["severity"] == "warn"
        assert entry["attributes"] == {"region": 'eu "west"', "sku": "A1"}
        assert set(project_services(client, tenant.project.id)) == {"cart"}

    def test_snappy_bomb_is_refused_by_its_declared_size(self, app, tenant):
        app.config["INGEST_MAX_BODY_BYTES"] = 1 << 20
        data = bytes(cramjam.snappy.compress_raw(b"\0" * (8 << 20)))
        response = app.test_client().post(
            PUSH, data=data, headers={"Content-Type": "application/x-protobuf", **tenant.headers}
        )
        assert response.status_code == 413

    @pytest.mark.parametrize(
        "data", [b"\xff\xff\xff", b"\x10not snappy at all"], ids=["bad-header", "bad-block"]
    )
    def test_bad_snappy_is_400(self, app, tenant, data):
        response = app.test_client().post(
            PUSH, data=data, headers={"Content-Type": "application/x-protobuf", **tenant.headers}
        )
        assert response.status_code == 400

    @pytest.mark.parametrize(
        ("text", "labels"),
        [
            ("{}", {}),
            ('{a="1"}', {"a": "1"}),
            ('{a="1", b="x\\"y"}', {"a": "1", "b": 'x"y'}),
            ('{ a = "1" ,b="2" }', {"a": "1", "b": "2"}),
        ],
    )
    def test_label_sets(self, text, labels):
        assert parse_labels(text) == labels

    @pytest.mark.parametrize("text", ['a="1"', "{a=1}", '{a="1"', '{a="1" b="2"}'])
    def test_bad_label_sets_are_400(self, app, tenant, text):
        data = snappy_push([(text, [(now_ns(), "x", {})])])
        response = app.test_client().post(
            PUSH, data=data, headers={"Content-Type": "application/x-protobuf", **tenant.headers}
        )
        assert response.status_code == 400
        with app.app_context():
            assert LogEntry.objects.count() == 0


class TestHostile:
    @pytest.mark.parametrize(
        "body",
        [
            b"\xff\xfe not utf-8",
            b'{"streams": [',
            b'{"streams": {}}',
            b'{"streams": [{"stream": {"a": 1}, "values": []}]}',
            b'{"streams": [{"stream": {}, "values": [["abc", "x"]]}]}',
            b'{"streams": [{"stream": {}, "values": [["1", 5]]}]}',
            b'{"streams": [{"stream": {}, "values": [["1"]]}]}',
            b'{"streams": [{"stream": {}, "values": [["1", "x", []]]}]}',
        ],
        ids=[
            "not-utf8",
            "truncated",
            "streams-not-array",
            "label-not-string",
            "bad-timestamp",
            "line-not-string",
            "short-value",
            "metadata-not-object",
        ],
    )
    def test_undecodable_bodies_are_400_and_store_nothing(self, app, tenant, body):
        response = app.test_client().post(
            PUSH, data=body, headers={"Content-Type": "application/json", **tenant.headers}
        )
        assert response.status_code == 400
        with app.app_context():
            assert LogEntry.objects.count() == 0
            assert Service.objects.count() == 0

    def test_other_media_types_are_415(self, app, tenant):
        response = app.test_client().post(
            PUSH, data=b"x", headers={"Content-Type": "text/plain", **tenant.headers}
        )
        assert response.status_code == 415

    def test_wrong_key_is_401(self, app, tenant):
        response = app.test_client().post(
            PUSH, json={"streams": []}, headers={"X-API-Key": "pmk_0123456789ab_nope"}
        )
        assert response.status_code == 401

    def test_far_future_and_past_are_refused(self, app, client, tenant):
        future = now_ns() + 3600 * 10**9
        streams = [{"stream": {"app": "a"}, "values": [[str(future), "f"], ["1000", "p"]]}]
        response = push_json(app, tenant, streams)
        assert response.status_code == 400
        message = response.json["message"]
        assert "too far in the future" in message
        assert "older than" in message
        assert project_logs(client, tenant.project.id) == []
