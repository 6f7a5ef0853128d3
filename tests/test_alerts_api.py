"""/api/alert-rules and /api/alerts through the HTTP API, with authentication on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from polymicro.alerts import service as alerts
from polymicro.alerts.models import AlertRule
from polymicro.common import clock
from polymicro.common.timeutil import format_time
from tests.alerts_helpers import alert_events, instance_rows, outbox_rows, point
from tests.conftest import client_as
from tests.factories import make_project, make_service

EVERY = 15


@pytest.fixture
def manual(app):
    with clock.use(clock.ManualClock()) as manual:
        yield manual


@pytest.fixture
def world(ctx, manual):
    project = make_project()
    svc = make_service(project)
    other = make_service(make_project())
    return project, svc, other


def body(svc, **fields) -> dict:
    data = {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "name": "high load",
        "kind": "metric_threshold",
        "aggregate": "p95",
        "field": "load",
        "window": 60,
        "operator": ">",
        "threshold": 80,
        "for": 30,
        "keep_firing_for": 60,
        "labels": {"severity": "page"},
        "annotations": {"summary": "{service} at {value}%", "description": "p95 > {threshold}"},
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not ...}


def test_rules_crud_by_role(app, world):
    _, svc, _ = world
    viewer, editor = client_as(app, "viewer"), client_as(app, "editor")
    assert app.test_client().get("/api/alert-rules").status_code == 401
    assert viewer.post("/api/alert-rules", json=body(svc)).status_code == 403
    created = editor.post("/api/alert-rules", json=body(svc))
    assert created.status_code == 201, created.json
    rule = created.json
    assert rule["for"] == 30
    assert rule["enabled"] is True
    assert rule["labels"] == {"severity": "page"}
    assert viewer.get(f"/api/alert-rules/{rule['id']}").json == rule
    listed = viewer.get(f"/api/alert-rules?project_id={svc.project_id}")
    assert [r["id"] for r in listed.json] == [rule["id"]]
    assert viewer.get("/api/v1/alert-rules?kind=log_count").json == []
    assert viewer.patch(f"/api/alert-rules/{rule['id']}", json={"for": 0}).status_code == 403
    patched = editor.patch(f"/api/alert-rules/{rule['id']}", json={"for": 0, "enabled": False})
    assert patched.status_code == 200, patched.json
    assert patched.json["for"] == 0
    assert patched.json["enabled"] is False
    put = editor.put(f"/api/alert-rules/{rule['id']}", json={"enabled": True})
    assert put.status_code == 200
    assert put.json["enabled"] is True
    # the kind changes: the metric fields go, the liveness ones come
    relived = editor.patch(f"/api/alert-rules/{rule['id']}", json={"kind": "liveness"})
    assert relived.status_code == 200, relived.json
    assert relived.json["states"] == ["critical", "offline"]
    assert relived.json["aggregate"] is None
    assert viewer.delete(f"/api/alert-rules/{rule['id']}").status_code == 403
    assert editor.delete(f"/api/alert-rules/{rule['id']}").status_code == 204
    assert editor.get(f"/api/alert-rules/{rule['id']}").status_code == 404
    assert editor.delete(f"/api/alert-rules/{rule['id']}").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "nope"}, "kind"),
        ({"aggregate": None}, "aggregate"),
        ({"aggregate": "median"}, "aggregate"),
        ({"field": "threads"}, "field"),
        ({"operator": "=~"}, "operator"),
        ({"threshold": "80"}, "threshold"),
        ({"window": 0}, "window"),
        ({"for": -1}, "for"),
        ({"min_severity": "error"}, "min_severity"),  # not of a metric rule
        ({"annotations": {"summary": "{value.__class__}"}}, "annotations"),
        ({"annotations": {"summary": "{secret}"}}, "annotations"),
        ({"labels": {"bad label": "x"}}, "labels"),
        ({"service_id": "0" * 24}, "service_id"),
        ({"project_id": "0" * 24}, "project_id"),
        ({"kind": "log_count", "aggregate": None, "field": None}, "min_severity"),
        ({"kind": "liveness", "states": ["passing"]}, "states"),
        ({"name": ""}, "name"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_rules_are_422_and_store_nothing(app, world, change, field):
    _, svc, _ = world
    response = client_as(app, "editor").post("/api/alert-rules", json=body(svc, **change))
    assert response.status_code == 422, response.json
    assert field in str(response.json)
    assert AlertRule.objects.count() == 0


def test_a_service_of_another_project_is_refused(app, world):
    _, svc, other = world
    response = client_as(app, "editor").post(
        "/api/alert-rules", json=body(svc, service_id=str(other.id))
    )
    assert response.status_code == 422
    assert "service_id" in response.json["errors"]["json"]


def test_alerts_list_get_and_silence(app, world, manual):
    _, svc, _ = world
    editor, viewer = client_as(app, "editor"), client_as(app, "viewer")
    rule = editor.post("/api/alert-rules", json=body(svc, **{"for": 0})).json
    point(svc, manual.now(), 99.0)
    assert alerts.evaluate_all() == 1
    listed = viewer.get(f"/api/alerts?state=firing&project_id={svc.project_id}")
    assert listed.status_code == 200
    [alert] = listed.json
    assert alert["rule_id"] == rule["id"]
    assert alert["rule_name"] == "high load"
    assert alert["service_name"] == svc.name
    assert alert["annotations"]["summary"] == f"{svc.name} at 99%"
    assert alert["labels"]["severity"] == "page"
    assert alert["labels"]["alertname"] == "high load"
    assert alert["silenced"] is False
    for query in (
        "state=pending",
        f"rule_id={'0' * 24}",
        f"service_id={'0' * 24}",
        f"project_id={'0' * 24}",
    ):
        assert viewer.get(f"/api/alerts?{query}").json == []
    assert viewer.get(f"/api/alerts?rule_id={rule['id']}").json == [alert]
    assert viewer.get("/api/alerts?state=bogus").status_code == 422
    assert viewer.get(f"/api/alerts/{alert['id']}").json == alert
    assert viewer.get(f"/api/alerts/{'0' * 24}").status_code == 404

    until = format_time(manual.now() + timedelta(hours=1))
    path = f"/api/alerts/{alert['id']}/silence"
    assert viewer.post(path, json={"until": until}).status_code == 403
    assert editor.post(path, json={"until": format_time(manual.now())}).status_code == 422
    assert editor.post(path, json={}).status_code == 422
    assert editor.post(f"/api/alerts/{'0' * 24}/silence", json={"until": until}).status_code == 404
    silenced = editor.post(path, json={"until": until})
    assert silenced.status_code == 200
    assert silenced.json["silenced"] is True
    assert silenced.json["silenced_until"] == until
    manual.advance(120)
    assert alerts.evaluate_all() == 1  # resolved while silenced: recorded, not notified
    assert viewer.get(path[: -len("/silence")]).json["state"] == "resolved"
    assert [r["status"] for r in outbox_rows()] == ["firing"]
    lifted = editor.post(path, json={"until": None})
    assert lifted.json["silenced"] is False
    types = [e["type"] for e in viewer.get("/api/events?after=0&limit=1000").json["events"]]
    assert types.count("alert.state_changed") == 2
    assert types.count("alert.silenced") == 2
    assert len(alert_events()) == 2


def test_backtest_on_seeded_data(app, world, manual):
    _, svc, _ = world
    editor, viewer = client_as(app, "editor"), client_as(app, "viewer")
    rule = editor.post(
        "/api/alert-rules", json=body(svc, aggregate="max", window=30, **{"for": 30})
    ).json
    start = manual.now() - timedelta(hours=1)
    for i in range(240):  # an hour of points, every 15 s: high from minute 20 to 30
        minute = i * EVERY / 60
        point(svc, start + timedelta(seconds=i * EVERY + 1), 95.0 if 20 <= minute < 30 else 5.0)
    path = f"/api/alert-rules/{rule['id']}/backtest"
    since, until = format_time(start), format_time(manual.now())
    response = viewer.post(f"{path}?since={since}&until={until}")
    assert response.status_code == 200, response.json
    result = response.json
    assert result["steps"] == 241
    assert result["step_seconds"] == EVERY
    assert [(t["before"], t["after"]) for t in result["transitions"]] == [
        ("inactive", "pending"),
        ("pending", "firing"),
        ("firing", "resolved"),
    ]
    fired = result["transitions"][1]
    assert fired["at"] == format_time(start + timedelta(minutes=20, seconds=45))
    assert fired["value"] == 95.0
    assert fired["service_name"] == svc.name
    assert instance_rows() == []  # wrote nothing
    assert outbox_rows() == []
    # too many steps, reversed bounds, unknown rule
    too_early = format_time(manual.now() - timedelta(days=30))
    assert viewer.post(f"{path}?since={too_early}&until={until}").status_code == 422
    assert viewer.post(f"{path}?since={until}&until={since}").status_code == 422
    assert viewer.post(f"/api/alert-rules/{'0' * 24}/backtest").status_code == 404
    assert viewer.post(path).status_code == 200  # the last hour by default


def test_deleting_a_service_deletes_its_rules(app, world):
    _, svc, _ = world
    editor = client_as(app, "editor")
    rule = editor.post("/api/alert-rules", json=body(svc)).json
    assert editor.delete(f"/api/services/{svc.id}").status_code == 204
    assert editor.get(f"/api/alert-rules/{rule['id']}").status_code == 404
