"""The builders of ``tests/factories.py`` store through the rules, as the tests rely on."""

from __future__ import annotations

import pytest
from bson import ObjectId

from polymicro.auth import service as auth
from polymicro.errors import Unauthorized
from polymicro.logs.models import LogEntry
from tests.factories import (
    MISSING,
    PASSWORD,
    as_json,
    at,
    log_body,
    make_key,
    make_log,
    make_logs,
    make_metric,
    make_project,
    make_service,
    make_user,
    minute_points,
    stamp,
)

pytestmark = pytest.mark.usefixtures("ctx")


def test_names_are_unique_so_builders_never_clash():
    project = make_project()
    assert make_project().name != project.name
    assert make_service(project).name != make_service(project).name


def test_a_sibling_service_shares_the_project():
    svc = make_service()
    assert make_service(project_id=svc.project_id).project_id == svc.project_id


def test_make_log_applies_the_severity_rules():
    entry = make_log(severity="FATAL", timestamp=at(5))
    assert (entry.severity, entry.level, entry.timestamp) == ("critical", 4, at(5))


def test_make_logs_stores_one_batch_in_order_with_shared_fields():
    svc = make_service()
    ids = make_logs(svc, [{"message": "a"}, {"message": "b", "severity": "error"}], source="ci")
    stored = [LogEntry.objects.get(id=i) for i in ids]
    assert [(e.message, e.severity, e.source) for e in stored] == [
        ("a", "info", "ci"),
        ("b", "error", "ci"),
    ]
    assert [LogEntry.objects.get(id=i).message for i in make_logs(svc, 3)] == [
        "line 0",
        "line 1",
        "line 2",
    ]


def test_make_metric_stores_its_points():
    metric = make_metric(points=minute_points(3, start=10))
    assert [(p["time"], p["load"]) for p in metric.data] == [
        (at(m), float(m)) for m in (10, 11, 12)
    ]


def test_make_user_logs_in_with_the_shared_password_and_has_its_role():
    user = make_user("editor")
    assert auth.authenticate(user["username"], PASSWORD).role == "editor"
    switched_off = make_user(active=False)
    with pytest.raises(Unauthorized):
        auth.authenticate(switched_off["username"], PASSWORD)


def test_make_key_returns_the_raw_key_of_its_project():
    project = make_project()
    key = make_key(project)
    assert auth.verify_api_key(key.key) == {"id": key.id, "project_id": project.id}


def test_bodies_are_what_a_client_sends():
    svc = make_service()
    body = log_body(svc, timestamp=at(1, ms=5), source=MISSING)
    assert body == {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "severity": "info",
        "message": "started",
        "timestamp": "2026-01-01T00:01:00.005Z",
    }
    assert stamp(1, ms=5) == body["timestamp"]
    assert log_body(svc, message=MISSING).keys() == {"project_id", "service_id", "severity"}
    assert as_json([{"id": ObjectId("0123456789abcdef01234567")}]) == [
        {"id": "0123456789abcdef01234567"}
    ]
