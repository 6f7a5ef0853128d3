"""Retention through the HTTP API (issue 14): GET /api/retention (admins), a project's
``retention`` object (editors set it; 422 on what cannot work), reads that follow the
horizon, /metrics, and the CLI."""

from __future__ import annotations

from datetime import timedelta

import pytest

from polymicro.logs.models import LogEntry
from tests import retention_helpers
from tests.conftest import client_as
from tests.factories import as_json, make_logs, make_metric, make_service

# The shared fixtures (an app context with retention days, a ManualClock).
ctx = retention_helpers.ctx
manual = retention_helpers.manual

DAY = 86400


@pytest.fixture
def svc(ctx, manual):
    svc = make_service()
    now = manual.now()
    make_logs(svc, [{"message": f"age {d}", "timestamp": now - timedelta(days=d)} for d in (0, 3)])
    return svc


def messages(client, path: str = "/api/logs") -> list[str]:
    response = client.get(path)
    assert response.status_code == 200, response.json
    return [row["message"] for row in response.json]


# --- GET /api/retention -------------------------------------------------------------------


def test_retention_shows_every_kind(client, svc, manual):
    response = client.get("/api/retention")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    kinds = {entry["kind"]: entry for entry in response.json["kinds"]}
    assert set(kinds) >= {"logs", "points", "events"}
    assert kinds["logs"]["days"] == 7
    assert kinds["logs"]["index_days"] == 7
    assert kinds["logs"]["setting"] == "POLYMICRO_RETENTION_LOGS_DAYS"
    assert kinds["logs"]["oldest"] == as_json(manual.now() - timedelta(days=3))
    assert kinds["logs"]["behind"] is False
    assert kinds["points"]["oldest"] is None
    assert response.json["margin_minutes"] == 30
    manual.advance(5 * DAY)  # the 3-day-old entry is now 8 days old: past 7 days + 30 min
    kinds = {entry["kind"]: entry for entry in client.get("/api/retention").json["kinds"]}
    assert kinds["logs"]["behind"] is True


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("editor", 403), ("admin", 200)])
def test_retention_is_for_admins(app, ctx, role, status):
    assert client_as(app, role).get("/api/retention").status_code == status
    assert client_as(app, role).get("/api/v1/retention").status_code == status


def test_retention_needs_credentials(anon_client, ctx):
    assert anon_client.get("/api/retention").status_code == 401


# --- a project's override -----------------------------------------------------------------


def test_an_editor_shortens_a_projects_logs_and_reads_follow_at_once(app, svc, manual):
    editor = client_as(app, "editor")
    path = f"/api/projects/{svc.project_id}"
    assert messages(editor, f"/api/logs/project/{svc.project_id}") == ["age 0", "age 3"]
    response = editor.patch(path, json={"retention": {"logs_days": 2}})
    assert response.status_code == 200, response.json
    assert response.json["retention"] == {"logs_days": 2}
    assert editor.get(path).json["retention"] == {"logs_days": 2}
    assert messages(editor, f"/api/logs/project/{svc.project_id}") == ["age 0"]
    assert messages(editor) == ["age 0"]
    assert LogEntry.objects.count() == 2  # the sweep deletes it (worker), reads hide it now
    overrides = {e["kind"]: e for e in client_as(app).get("/api/retention").json["kinds"]}
    assert overrides["logs"]["overrides"][0]["project_id"] == str(svc.project_id)
    assert overrides["logs"]["overrides"][0]["effective_days"] == 2
    cleared = editor.patch(path, json={"retention": {}})
    assert cleared.json["retention"] == {}
    assert messages(editor) == ["age 0", "age 3"]


def test_a_project_is_created_with_an_override(client, ctx):
    response = client.post("/api/projects", json={"name": "short", "retention": {"points_days": 1}})
    assert response.status_code == 201, response.json
    assert response.json["retention"] == {"points_days": 1}


def test_a_viewer_cannot_set_an_override(app, svc):
    response = client_as(app, "viewer").patch(
        f"/api/projects/{svc.project_id}", json={"retention": {"logs_days": 1}}
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "retention",
    [
        {"logs_days": 8},  # longer than the global 7 days: a TTL index cannot keep it
        {"points_days": 6},
        {"logs_days": 0},
        {"logs_days": -1},
        {"logs_days": 1.5},
        {"logs_days": "3"},
        {"events_days": 1},
        {"logs_days": 36501},
        "7",
        [7],
        None,
    ],
)
def test_a_bad_override_is_a_422_and_changes_nothing(client, svc, retention):
    path = f"/api/projects/{svc.project_id}"
    response = client.patch(path, json={"retention": retention})
    assert response.status_code == 422, response.json
    assert "retention" in response.json["errors"]["json"]
    assert client.get(path).json["retention"] == {}


def test_projects_without_an_override_keep_their_shape_for_the_dashboard(client, svc):
    project = client.get(f"/api/projects/{svc.project_id}").json
    assert project["retention"] == {}
    assert project["microservices"]
    listed = client.get("/api/projects").json
    assert listed[0]["retention"] == {}


# --- reads follow the horizon -------------------------------------------------------------


def test_log_and_point_reads_follow_the_horizon(client, svc, manual):
    now = manual.now()
    metric = make_metric(
        svc, points=[{"time": now - timedelta(days=d), "load": float(d)} for d in (0, 4)]
    )
    assert messages(client) == ["age 0", "age 3"]
    manual.advance(4.5 * DAY)
    assert messages(client) == ["age 0"]
    assert messages(client, "/api/logs?q=AGE") == ["age 0"]  # with another raw filter
    assert messages(client, f"/api/logs/service/{svc.id}?min_severity=info") == ["age 0"]
    data = client.get(f"/api/metrics/cpu/{metric['id']}").json["data"]
    assert [p["load"] for p in data] == [0.0]
    series = client.get(
        f"/api/metrics/cpu/{metric['id']}/series",
        query_string={"since": as_json(now - timedelta(days=6)), "step": "1d"},
    )
    assert series.status_code == 200
    assert sum(bucket["count"] for bucket in series.json) == 1


# --- /metrics and the CLI -----------------------------------------------------------------


def test_metrics_export_the_retention(app, svc):
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'polymicro_retention_days{kind="logs"} 7.0' in text
    assert 'polymicro_retention_index_days{kind="logs"} 7.0' in text
    assert 'polymicro_retention_behind{kind="logs"} 0.0' in text
    assert 'polymicro_retention_oldest_timestamp_seconds{kind="logs"}' in text
    assert 'polymicro_retention_days{kind="events"} 90.0' in text


def test_the_cli_applies_and_reports(app, ctx):
    runner = app.test_cli_runner()
    applied = runner.invoke(args=["retention", "apply"])
    assert applied.exit_code == 0, applied.output
    assert "logs: 7 days" in applied.output
    app.config["RETENTION_LOGS_DAYS"] = 3
    changed = runner.invoke(args=["retention", "apply"])
    assert "logs: 3 days (RETENTION_LOGS_DAYS): " in changed.output
    assert "unchanged" not in changed.output.splitlines()[0]
    status = runner.invoke(args=["retention", "status"])
    assert status.exit_code == 0, status.output
    assert "logs: setting 3 days, index 3 days" in status.output
    as_json_out = runner.invoke(args=["retention", "status", "--json"])
    assert '"kind": "logs"' in as_json_out.output
