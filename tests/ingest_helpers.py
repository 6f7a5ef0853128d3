"""Builders shared by the ingest tests: OTLP requests made with the opentelemetry-proto
message classes, a project with an API key, and read-backs through the API."""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from polymicro.auth import service as auth
from tests.factories import make_project

PROTOBUF = "application/x-protobuf"


@dataclass
class Tenant:
    project: object
    key: str

    @property
    def headers(self) -> dict:
        return {"X-API-Key": self.key}


def make_tenant(name: str | None = None) -> Tenant:
    project = make_project(**({"name": name} if name else {}))
    key = auth.create_api_key(project.id, "shipper", None)["key"]
    return Tenant(project, key)


def now_ns() -> int:
    return time.time_ns()


def _set_value(any_value, value) -> None:
    if isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    elif isinstance(value, bytes):
        any_value.bytes_value = value
    elif isinstance(value, list):
        for item in value:
            _set_value(any_value.array_value.values.add(), item)
    elif isinstance(value, dict):
        for key, item in value.items():
            kv = any_value.kvlist_value.values.add(key=key)
            _set_value(kv.value, item)
    else:
        any_value.string_value = value


def _attributes(target, attributes: dict) -> None:
    for key, value in attributes.items():
        kv = target.add(key=key)
        _set_value(kv.value, value)


def logs_request(*groups) -> ExportLogsServiceRequest:
    """``groups``: ``(service name or None, [record fields...])``; a record's fields are
    ``body``, ``severity_number``, ``severity_text``, ``time_unix_nano``,
    ``observed_time_unix_nano``, ``attributes``, ``trace_id``, ``span_id``, ``scope``,
    ``event_name``."""
    request = ExportLogsServiceRequest()
    for service, records in groups:
        resource_logs = request.resource_logs.add()
        if service is not None:
            _attributes(resource_logs.resource.attributes, {"service.name": service})
        by_scope: dict = {}
        for fields in records:
            fields = dict(fields)
            scope = fields.pop("scope", "")
            if scope not in by_scope:
                by_scope[scope] = resource_logs.scope_logs.add()
                by_scope[scope].scope.name = scope
            record = by_scope[scope].log_records.add()
            if "body" in fields:
                _set_value(record.body, fields.pop("body"))
            _attributes(record.attributes, fields.pop("attributes", {}))
            for name, value in fields.items():
                setattr(record, name, value)
    return request


def metrics_request(service: str | None, *metrics) -> ExportMetricsServiceRequest:
    """``metrics``: ``(name, "gauge"|"sum", [(value, time_ns, attributes), ...])``."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    if service is not None:
        _attributes(resource_metrics.resource.attributes, {"service.name": service})
    scope_metrics = resource_metrics.scope_metrics.add()
    for name, kind, points in metrics:
        metric = scope_metrics.metrics.add(name=name)
        data = getattr(metric, kind)
        for value, time_ns, attributes in points:
            point = data.data_points.add(time_unix_nano=time_ns)
            if isinstance(value, int):
                point.as_int = value
            else:
                point.as_double = value
            _attributes(point.attributes, attributes)
    return request


def post_protobuf(client, path: str, message, tenant: Tenant, **headers):
    return client.post(
        path,
        data=message.SerializeToString(),
        headers={"Content-Type": PROTOBUF, **tenant.headers, **headers},
    )


def project_logs(client, project_id) -> list[dict]:
    """Every log entry of the project, newest first (through the API, as an admin)."""
    response = client.get(f"/api/logs/project/{project_id}?page_size=1000")
    assert response.status_code == 200, response.json
    return response.json


def project_services(client, project_id) -> dict[str, dict]:
    response = client.get(f"/api/services/project/{project_id}?page_size=1000")
    assert response.status_code == 200, response.json
    return {svc["name"]: svc for svc in response.json}


def project_metrics(client, project_id) -> dict[str, dict]:
    response = client.get(f"/api/metrics/cpu/project/{project_id}?points=1000")
    assert response.status_code == 200, response.json
    return {entry["service_name"]: entry for entry in response.json}
