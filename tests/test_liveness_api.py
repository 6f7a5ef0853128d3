"""Heartbeats and liveness through the HTTP API, with authentication on.

- ``POST /api/services/{id}/heartbeat`` (``/start``, ``/fail``): any form of an API key
  of the service's project, or an editor's token; another project's key is a 403 and
  stores nothing.
- The dashboard's fields: a service with heartbeats shows its liveness as ``health`` and
  ``status`` (always values of the original contract), in the services and in the
  projects' trees; one without keeps its stored values.
- ``GET /api/services?liveness=``, ``GET /api/services/{id}/liveness``, the events.
"""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from bson import ObjectId

from polymicro.common.timeutil import format_time
from polymicro.liveness import service as liveness
from polymicro.liveness.models import LivenessState, LivenessTransition, Observer
from polymicro.security.limits import IngestRateLimited
from polymicro.services.models import HEALTHS, LIVENESS_STATES, STATUSES
from tests.conftest import client_as
from tests.factories import make_key, make_project, make_service
from tests.liveness_helpers import Timeline, liveness_events, state_row


@pytest.fixture
def timeline(app):
    with Timeline() as line:
        yield line


@pytest.fixture
def world(ctx, timeline):
    project = make_project()
    svc = make_service(project, heartbeat_ttl=10, heartbeat_grace=10, health="Degraded")
    other = make_project()
    return {
        "project": project,
        "svc": svc,
        "path": f"/api/services/{svc.id}",
        "key": make_key(project)["key"],
        "other_key": make_key(other)["key"],
    }


def key_headers(form: str, key: str) -> dict:
    if form == "x-api-key":
        return {"X-API-Key": key}
    if form == "bearer":
        return {"Authorization": f"Bearer {key}"}
    basic = base64.b64encode(f"heartbeat:{key}".encode()).decode()
    return {"Authorization": f"Basic {basic}"}


def nothing_stored(svc) -> bool:
    return (
        state_row(svc.id) is None
        and LivenessTransition.objects.count() == 0
        and liveness_events() == []
    )


# --- who may send a heartbeat -------------------------------------------------------------


@pytest.mark.parametrize("form", ["x-api-key", "bearer", "basic"])
def test_a_key_of_the_service_s_project_sends_heartbeats_in_any_form(app, world, form):
    response = app.test_client().post(
        world["path"] + "/heartbeat", headers=key_headers(form, world["key"])
    )
    assert response.status_code == 200, response.json
    assert response.json["state"] == "passing"
    (event,) = liveness_events(world["svc"].id)
    assert event["actor"]["kind"] == "api_key"


def test_an_editor_token_sends_heartbeats(app, world):
    response = client_as(app, "editor").post(world["path"] + "/heartbeat", json={})
    assert response.status_code == 200
    assert client_as(app, "viewer").post(world["path"] + "/heartbeat").status_code == 403


@pytest.mark.parametrize("endpoint", ["heartbeat", "heartbeat/start", "heartbeat/fail"])
def test_another_project_s_key_is_refused_and_nothing_is_stored(app, world, endpoint):
    response = app.test_client().post(
        f"{world['path']}/{endpoint}", headers={"X-API-Key": world["other_key"]}
    )
    assert response.status_code == 403
    assert response.json["message"] == "This API key belongs to another project."
    assert nothing_stored(world["svc"])
    assert Observer.objects.count() == 0


@pytest.mark.parametrize(
    "path", ["/api/services/65f0c0ffee0000000000c0de", "/api/services/not-an-id"]
)  # a fixed id that names nothing: the same test id in every pytest-xdist worker
def test_an_unknown_service_is_404(client, world, path):
    assert client.post(path + "/heartbeat").status_code == 404
    assert client.get(path + "/liveness").status_code == 404
    assert LivenessState.objects.count() == 0


def test_a_key_s_heartbeat_counts_against_its_project_s_ingest_budget(app, world, monkeypatch):
    def spent(scope, entries):
        assert (scope, entries) == (world["project"].id, 1)
        raise IngestRateLimited("over budget", retry_after=3)

    monkeypatch.setattr(liveness, "charge_ingest", spent)
    key = {"X-API-Key": world["key"]}
    response = app.test_client().post(world["path"] + "/heartbeat", headers=key)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert nothing_stored(world["svc"])


# --- the body -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        ("heartbeat", {"status": "dead"}, "status"),
        ("heartbeat", {"status": 1}, "status"),
        ("heartbeat", {"note": "x" * 501}, "note"),
        ("heartbeat", {"run_id": " "}, "run_id"),
        ("heartbeat", {"run_id": "r" * 101}, "run_id"),
        ("heartbeat", {"timestamp": "2020-01-01T00:00:00Z"}, "timestamp"),  # server time only
        ("heartbeat/start", {"status": "passing"}, "status"),
        ("heartbeat/fail", {"run_id": 7}, "run_id"),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field_and_stores_nothing(
    client, world, endpoint, body, field
):
    response = client.post(f"{world['path']}/{endpoint}", json=body)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]
    assert nothing_stored(world["svc"])


def test_a_body_that_is_not_json_is_refused(client, world):
    response = client.post(world["path"] + "/heartbeat", data="ok", content_type="text/plain")
    assert response.status_code == 415
    response = client.post(world["path"] + "/heartbeat", data="{", content_type="application/json")
    assert response.status_code == 400
    assert nothing_stored(world["svc"])


def test_the_status_is_case_insensitive_and_the_body_optional(client, world):
    assert client.post(world["path"] + "/heartbeat").json["state"] == "passing"
    response = client.post(world["path"] + "/heartbeat", json={"status": "WARNING"})
    assert response.json["state"] == "warning"


def test_the_server_s_time_decides_last_seen(client, world, timeline):
    headers = {"Date": "Thu, 01 Jan 2015 00:00:00 GMT"}
    response = client.post(world["path"] + "/heartbeat", headers=headers)
    assert response.json["last_seen"] == format_time(timeline.now())
    assert response.json["deadline"] == format_time(timeline.now() + timedelta(seconds=20))


def test_a_job_run_through_the_api(client, world, timeline):
    path = world["path"]
    assert client.post(path + "/heartbeat/start", json={"run_id": "n1"}).status_code == 200
    timeline.advance(10)
    page = client.get(path + "/liveness").json
    assert [run["id"] for run in page["runs"]] == ["n1"]
    timeline.advance(5)
    assert client.get(path).json["liveness"] == "critical"  # not finished within 10 s
    response = client.post(path + "/heartbeat/fail", json={"run_id": "n1", "note": "exit 3"})
    assert response.json["reason"] == "run 'n1' failed: exit 3"
    assert client.post(path + "/heartbeat", json={"run_id": "n1"}).json["state"] == "passing"


# --- the dashboard's fields ----------------------------------------------------------------


def dashboard(client, world) -> list[tuple]:
    """(liveness, health, status) of the service, and (health, status) in its project's
    tree, in the list, and in the project list."""
    svc = client.get(world["path"]).json
    (tree,) = client.get(f"/api/projects/{world['project'].id}").json["microservices"]
    (listed,) = client.get(f"/api/services/project/{world['project'].id}").json
    (in_list,) = [
        s
        for p in client.get("/api/projects").json
        if p["id"] == str(world["project"].id)
        for s in p["microservices"]
    ]
    shown = {(svc["health"], svc["status"])}
    shown |= {(t["health"], t["status"]) for t in (tree, listed, in_list)}
    assert len(shown) == 1, shown  # every view agrees
    return svc["liveness"], svc["health"], svc["status"]


def test_the_dashboard_s_fields_follow_liveness_through_every_state(app, client, world, timeline):
    app.config["HEARTBEAT_OFFLINE_AFTER_SECONDS"] = 30
    path = world["path"]
    assert dashboard(client, world) == (None, "Degraded", "Unknown")  # stored values
    seen = {}
    client.post(path + "/heartbeat")
    seen["passing"] = dashboard(client, world)
    client.post(path + "/heartbeat", json={"status": "warning"})
    seen["warning"] = dashboard(client, world)
    timeline.advance(20)
    seen["critical"] = dashboard(client, world)
    timeline.advance(30)
    seen["offline"] = dashboard(client, world)
    client.post(path + "/heartbeat")
    timeline.advance(60, worker=False)  # polymicro down longer than the interval
    seen["unknown"] = dashboard(client, world)
    assert seen == {
        "passing": ("passing", "Healthy", "Running"),
        "warning": ("warning", "Warning", "Running"),
        "critical": ("critical", "Critical", "Error"),
        "offline": ("offline", "Critical", "Stopped"),
        "unknown": ("unknown", "Unknown", "Unknown"),
    }
    for state, (_liveness, health, status) in seen.items():
        assert state in LIVENESS_STATES
        assert health in HEALTHS
        assert status in STATUSES


def test_a_service_without_heartbeats_keeps_today_s_behaviour(client, world):
    client.patch(world["path"], json={"status": "Running", "health": "Healthy"})
    body = client.get(world["path"]).json
    assert (body["liveness"], body["health"], body["status"]) == (None, "Healthy", "Running")
    filtered = client.get("/api/services?health=Healthy&status=Running").json
    assert [s["id"] for s in filtered] == [str(world["svc"].id)]


def test_a_cached_view_follows_a_deadline_with_no_worker(client, world, timeline):
    client.post(world["path"] + "/heartbeat")
    first = client.get(world["path"])
    assert first.json["liveness"] == "passing"
    assert (
        client.get(world["path"], headers={"If-None-Match": first.headers["ETag"]}).status_code
        == 304
    )
    timeline.advance(25, worker=False)
    after = client.get(world["path"], headers={"If-None-Match": first.headers["ETag"]})
    assert after.status_code == 200
    assert after.json["liveness"] == "critical"
    assert [s["name"] for s in client.get("/api/services?liveness=critical").json] == [
        world["svc"].name
    ]


def test_the_liveness_filter(client, world, timeline):
    other = client.post(
        "/api/services", json={"project_id": str(world["project"].id), "name": "other"}
    ).json
    client.post(world["path"] + "/heartbeat")
    client.post(f"/api/services/{other['id']}/heartbeat", json={"status": "critical"})

    def names(query):
        response = client.get("/api/services?" + query)
        assert response.status_code == 200
        return [s["name"] for s in response.json]

    assert names("liveness=passing") == [world["svc"].name]
    assert names("liveness=CRITICAL") == ["other"]
    assert names("liveness=unknown") == []
    assert names(f"liveness=passing&project_id={ObjectId()}") == []
    response = client.get("/api/services?liveness=dead")
    assert response.status_code == 422
    assert "liveness" in response.json["errors"]["query"]


# --- settings on the service ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"heartbeat_ttl": 0},
        {"heartbeat_ttl": "10"},
        {"heartbeat_ttl": 10.5},
        {"heartbeat_ttl": 30 * 86400 + 1},
        {"heartbeat_grace": -1},
        {"heartbeat_failures": 0},
        {"heartbeat_failures": 101},
        {"heartbeat_from_ingest": "true"},
        {"heartbeat_from_ingest": 1},
        {"liveness": "passing"},
    ],
)
def test_bad_liveness_settings_are_refused(client, world, body):
    response = client.patch(world["path"], json=body)
    assert response.status_code == 422
    assert set(body) <= set(response.json["errors"]["json"])


def test_liveness_settings_are_kept_and_take_effect_at_the_next_heartbeat(client, world):
    body = {"heartbeat_ttl": 120, "heartbeat_grace": 0, "heartbeat_failures": 2}
    assert (
        client.patch(world["path"], json=body | {"heartbeat_from_ingest": True}).status_code == 200
    )
    service = client.get(world["path"]).json
    assert {k: service[k] for k in body} == body
    assert service["heartbeat_from_ingest"] is True
    client.post(world["path"] + "/heartbeat")
    page = client.get(world["path"] + "/liveness").json
    assert (page["heartbeat_ttl"], page["heartbeat_grace"], page["heartbeat_failures"]) == (
        120,
        0,
        2,
    )


# --- history, uptime, events ---------------------------------------------------------------


def test_the_liveness_page(client, world, timeline):
    path = world["path"]
    empty = client.get(path + "/liveness").json
    assert (empty["state"], empty["transitions"]) == (None, [])
    assert empty["uptime"] == {"24h": None, "7d": None, "30d": None}
    client.post(path + "/heartbeat", json={"note": "v1.2 up"})
    timeline.advance(60)  # critical after 20 s
    client.post(path + "/heartbeat")
    timeline.advance(10)
    page = client.get(path + "/liveness").json
    assert page["state"] == "passing"
    assert page["note"] is None
    assert [(t["before"], t["after"]) for t in page["transitions"]] == [
        ("critical", "passing"),
        ("passing", "critical"),
        (None, "passing"),
    ]
    assert [t["duration_seconds"] for t in page["transitions"]] == [10, 40, 20]
    assert page["uptime"] == {"24h": 42.857, "7d": 42.857, "30d": 42.857}  # 30 s of 70 s up
    one = client.get(path + "/liveness?transitions=1").json["transitions"]
    assert len(one) == 1
    assert client.get(path + "/liveness?transitions=101").status_code == 422


def test_each_change_is_one_event_with_before_after_and_reason(client, world, timeline):
    path = world["path"]
    client.post(path + "/heartbeat")
    client.post(path + "/heartbeat")  # no change, no event
    timeline.advance(25)
    response = client.get("/api/events?type=service.liveness_changed&after=0")
    assert [e["changes"]["liveness"]["after"] for e in response.json["events"]] == [
        "passing",
        "critical",
    ]
    event = response.json["events"][-1]
    assert event["subject"] == {
        "kind": "service",
        "id": str(world["svc"].id),
        "name": world["svc"].name,
    }
    assert event["project_id"] == str(world["project"].id)
    assert event["actor"]["kind"] == "system"  # the worker noticed it
    change = event["changes"]["liveness"]
    assert (change["before"], change["after"]) == ("passing", "critical")
    assert change["reason"].startswith("no heartbeat since")


def test_a_read_never_fails_because_the_changes_could_not_be_recorded(
    client, world, timeline, monkeypatch, caplog
):
    from pymongo.errors import ServerSelectionTimeoutError

    assert client.get(world["path"]).status_code == 200  # cached now

    def database_away():
        raise ServerSelectionTimeoutError("no server")

    monkeypatch.setattr(liveness, "record_due", database_away)
    timeline.advance(5, worker=False)
    response = client.get(world["path"])
    assert response.status_code == 200
    assert response.json["name"] == world["svc"].name
    assert (
        "liveness changes not recorded before a read (ServerSelectionTimeoutError)" in caplog.text
    )


def test_the_etag_covers_liveness(client, world):
    before = client.get(world["path"]).headers["ETag"]
    client.post(world["path"] + "/heartbeat")
    stale = client.patch(world["path"], json={"version": "2"}, headers={"If-Match": before})
    assert stale.status_code == 412
    fresh = client.get(world["path"]).headers["ETag"]
    assert (
        client.patch(world["path"], json={"version": "2"}, headers={"If-Match": fresh}).json[
            "liveness"
        ]
        == "passing"
    )
