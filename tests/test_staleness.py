"""Bounded staleness of the log and CPU-point lists (``LIST_STALENESS_MS``).

The promise (polymicro/common/caching.py): a list read at time T reflects every write
acknowledged before T - window, and every write of the reader itself; others' writes
younger than the window may be missing.  Exact namespaces (the catalog) never lag.
Time is moved with ``caching.clock``; nothing sleeps.
"""

from __future__ import annotations

import pytest
from flask import g

from polymicro.common import caching
from polymicro.logs import service as logs
from polymicro.metrics import service as metrics
from polymicro.projects import service as projects
from polymicro.security import Principal
from tests.conftest import client_as
from tests.factories import make_service

WINDOW_MS = 1000


class Clock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000


@pytest.fixture
def clock(monkeypatch, app):
    app.config["LIST_STALENESS_MS"] = WINDOW_MS
    fake = Clock()
    monkeypatch.setattr(caching, "clock", fake)
    yield fake
    if caching._refresher is not None:  # let background refreshes finish
        caching._refresher.shutdown(wait=True)
        caching._refresher = None


def _entry(svc, message="m"):
    return {
        "project_id": svc.project_id,
        "service_id": svc.id,
        "severity": "error",
        "message": message,
    }


def as_someone_else(app, write):
    """Run ``write`` in a request of another user (another caller than this test)."""
    with app.test_request_context():
        g.principal = Principal(kind="user", role="editor", user_id="someone-else")
        return write()


def _messages(project_id) -> list[str]:
    query = logs.list_project_logs(project_id)
    return [row["message"] for row in query[0:100]]


# --- the service layer ------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_service_others_writes_may_lag_by_the_window_and_no_more(app, clock):
    svc = make_service()
    logs.create_log(_entry(svc, "first"))
    assert _messages(svc.project_id) == ["first"]
    assert logs.list_project_logs(svc.project_id).count() == 1
    as_someone_else(app, lambda: logs.create_log(_entry(svc, "second")))
    clock.advance_ms(WINDOW_MS / 2 - 1)
    assert _messages(svc.project_id) == ["first"]  # inside the window: may lag
    assert logs.list_project_logs(svc.project_id).count() == 1
    clock.advance_ms(1 + WINDOW_MS / 2)  # the entry is a window old: never served
    assert sorted(_messages(svc.project_id)) == ["first", "second"]


@pytest.mark.usefixtures("ctx")
def test_service_a_callers_own_write_is_seen_at_once(app, clock):
    svc = make_service()
    assert _messages(svc.project_id) == []
    logs.create_log(_entry(svc, "mine"))  # this process is the caller
    assert _messages(svc.project_id) == ["mine"]


@pytest.mark.usefixtures("ctx")
def test_service_a_window_of_zero_is_exact(app, clock):
    app.config["LIST_STALENESS_MS"] = 0
    svc = make_service()
    assert _messages(svc.project_id) == []
    as_someone_else(app, lambda: logs.create_log(_entry(svc, "theirs")))
    assert _messages(svc.project_id) == ["theirs"]


@pytest.mark.usefixtures("ctx")
def test_service_points_lag_like_logs(app, clock):
    svc = make_service()
    metric = metrics.create_metric({"project_id": svc.project_id, "service_name": svc.name})

    def loads():
        return [p["load"] for p in metrics.list_project_metrics(svc.project_id)[0:10][0]["data"]]

    assert loads() == []
    as_someone_else(app, lambda: metrics.append_cpu_points(metric["id"], [{"load": 3.0}]))
    assert loads() == []
    clock.advance_ms(WINDOW_MS)
    assert loads() == [3.0]


@pytest.mark.usefixtures("ctx")
def test_service_the_catalog_never_lags(app, clock):
    assert projects.list_projects().count() == 0
    as_someone_else(app, lambda: projects.create_project({"name": "new"}))
    assert projects.list_projects().count() == 1


def _timed_producer(clock, took_ms: float):
    """A producer whose every computation takes ``took_ms`` of the clock and returns
    how many computations there were."""
    calls = []

    def producer():
        calls.append(1)
        clock.advance_ms(took_ms)
        return len(calls)

    return producer


@pytest.mark.usefixtures("ctx")
def test_service_one_reader_refreshes_ahead_by_three_slow_computations(app, clock):
    svc = make_service()
    producer = _timed_producer(clock, 200)  # 200 ms: three of them, 600 > W/2

    namespace = logs.LOGS.key(svc.project_id)
    assert caching.cached(namespace, "k", producer) == 1
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    clock.advance_ms(WINDOW_MS - 3 * 200 - 200 - 1)  # the entry is 399 ms old
    assert caching.cached(namespace, "k", producer) == 1  # served; no refresh yet
    clock.advance_ms(2)  # 401 ms: less than three computations left of the window
    assert caching.cached(namespace, "k", producer) == 2  # took the lease: recomputed
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    clock.advance_ms(WINDOW_MS - 600)
    assert caching.cached(namespace, "k", producer) == 3


@pytest.mark.usefixtures("ctx")
def test_service_a_quick_computation_is_refreshed_ahead_at_half_the_window(app, clock):
    svc = make_service()
    producer = _timed_producer(clock, 10)  # 10 ms: three would leave a lead of 30 ms

    namespace = logs.LOGS.key(svc.project_id)
    assert caching.cached(namespace, "k", producer) == 1
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    half = WINDOW_MS * caching.REFRESH_AHEAD_FRACTION
    clock.advance_ms(half - 10 - 1)  # the entry is half the window old, less 1 ms
    assert caching.cached(namespace, "k", producer) == 1  # served; no refresh yet
    clock.advance_ms(2)  # past half the window: refreshed, long before it ages out
    assert caching.cached(namespace, "k", producer) == 2


@pytest.mark.usefixtures("ctx")
def test_service_a_value_built_from_stale_entries_is_as_old_as_they_are(app, clock):
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    inner = caching.Reader(namespace)
    assert inner.get("inner", lambda: "old") == "old"
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    clock.advance_ms(WINDOW_MS / 4)
    outer = caching.Reader(namespace)
    built = outer.get("outer", lambda: "built on " + caching.Reader(namespace).get("inner", str))
    assert built == "built on old"
    stored = caching.cache.get(caching._entry_key(namespace, "outer"))
    assert stored[0] == caching.STALE  # never current
    assert stored[1] == pytest.approx((clock.now - WINDOW_MS / 4 / 1000) * 1000)
    clock.advance_ms(WINDOW_MS * 3 / 4)  # a window after its oldest input: not served
    assert caching.Reader(namespace).get("outer", lambda: "fresh") == "fresh"


# --- through the API ---------------------------------------------------------------------


@pytest.fixture
def api(app, client, clock):
    project = client.post("/api/projects", json={"name": "Shop"}).json
    svc = client.post("/api/services", json={"project_id": project["id"], "name": "api"}).json
    metric = client.post(
        "/api/metrics/cpu", json={"project_id": project["id"], "service_name": "api"}
    ).json
    key = client.post(f"/api/projects/{project['id']}/keys", json={"name": "svc"}).json["key"]
    writer = app.test_client()
    writer.environ_base["HTTP_X_API_KEY"] = key
    entry = {"project_id": project["id"], "service_id": svc["id"], "severity": "error"}
    return {"project": project, "metric": metric, "writer": writer, "entry": entry}


def _api_messages(client, path):
    return [e["message"] for e in client.get(path).json]


@pytest.mark.parametrize("which", ["project", "filtered"])
def test_api_a_dashboard_sees_others_writes_within_the_window(app, api, clock, which):
    pid = api["project"]["id"]
    path = {
        "project": f"/api/logs/project/{pid}",
        "filtered": f"/api/logs?project_id={pid}&severity=error",
    }[which]
    viewer = client_as(app, "viewer")
    assert _api_messages(viewer, path) == []
    assert api["writer"].post("/api/logs", json={**api["entry"], "message": "x"}).status_code == 201
    clock.advance_ms(WINDOW_MS / 2 - 1)
    listed = viewer.get(path)
    assert listed.json == []  # may lag: a service's log, younger than the window
    assert listed.headers["X-Pagination"]
    clock.advance_ms(WINDOW_MS / 2 + 1)
    assert _api_messages(viewer, path) == ["x"]  # a window later: always there


def test_api_a_user_reads_their_own_write_at_once(app, api, clock):
    path = f"/api/logs/project/{api['project']['id']}"
    editor = client_as(app, "editor")
    assert _api_messages(editor, path) == []
    assert editor.post("/api/logs", json={**api["entry"], "message": "mine"}).status_code == 201
    assert _api_messages(editor, path) == ["mine"]


def test_api_cpu_points_follow_the_same_promise(app, api, clock):
    path = f"/api/metrics/cpu/project/{api['project']['id']}"
    viewer = client_as(app, "viewer")
    assert viewer.get(path).json[0]["data"] == []
    posted = api["writer"].post(f"/api/metrics/cpu/{api['metric']['id']}/data", json={"load": 2})
    assert posted.status_code == 201
    assert viewer.get(path).json[0]["data"] == []
    clock.advance_ms(WINDOW_MS)
    assert [p["load"] for p in viewer.get(path).json[0]["data"]] == [2.0]


def test_api_a_stale_read_near_the_end_of_the_window_is_refreshed_in_the_background(
    app, api, clock, monkeypatch
):
    monkeypatch.setattr(caching.Reader, "_took", lambda self: WINDOW_MS / 6)  # refresh at W/2
    path = f"/api/logs/project/{api['project']['id']}"
    viewer = client_as(app, "viewer")
    assert _api_messages(viewer, path) == []
    api["writer"].post("/api/logs", json={**api["entry"], "message": "x"})
    clock.advance_ms(WINDOW_MS * 3 / 4)
    assert _api_messages(viewer, path) == []  # served at once, refresh scheduled
    caching._refresher.shutdown(wait=True)  # the refresh has run
    caching._refresher = None
    assert _api_messages(viewer, path) == ["x"]  # well inside the window: the new entry


def test_api_with_auth_off_every_caller_sees_every_write(app, api, clock):
    app.config["AUTH_ENABLED"] = False
    anonymous = app.test_client()
    path = f"/api/logs/project/{api['project']['id']}"
    assert anonymous.get(path).json == []
    anonymous.post("/api/logs", json={**api["entry"], "message": "x"})
    assert _api_messages(anonymous, path) == ["x"]
