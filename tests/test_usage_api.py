"""``GET /api/projects/{id}/usage`` and ``GET /api/projects?sort=usage``: what a project
stores, counted by the domains above projects (a blinker way up), and who may read it."""

from __future__ import annotations

import pytest

from polymicro.metrics import service as metrics
from polymicro.metrics.models import TYPICAL_POINT_BYTES, TYPICAL_ROLLUP_BYTES
from polymicro.projects import service as projects
from tests.conftest import USES_REAL_DB, client_as
from tests.factories import at, make_logs, make_metric, make_project, make_service, stamp

URL = "/api/projects"
UNKNOWN_ID = "0123456789abcdef01234567"


@pytest.fixture
def busy(ctx):
    """A project with 5 logs and 3 CPU points over two hours (rolled up)."""
    project = make_project(name="busy")
    svc = make_service(project)
    make_logs(svc, [{"message": f"m{i}", "timestamp": at(10 + i)} for i in range(5)])
    points = [{"time": at(1), "load": 1.0}, {"time": at(70), "load": 2.0}]
    points.append({"time": at(200), "load": 3.0})
    make_metric(svc, points)
    metrics.recompute_rollups()
    return project


def test_usage_counts_logs_points_and_rollups_with_the_oldest_and_newest(client, busy):
    response = client.get(f"{URL}/{busy.id}/usage")

    assert response.status_code == 200
    body = response.json
    assert body["project_id"] == str(busy.id)
    # three hours with points: three 1h buckets and three 5m buckets
    assert (body["logs"], body["points"], body["rollups"]) == (5, 3, 6)
    assert body["oldest"] == stamp(1)
    assert body["newest"] == stamp(200)
    assert body["storage_bytes"] > 0
    if not USES_REAL_DB:  # mongomock has no collStats: the typical sizes
        assert body["storage_bytes"] >= 3 * TYPICAL_POINT_BYTES + 6 * TYPICAL_ROLLUP_BYTES


def test_an_empty_project_uses_nothing(client, ctx):
    project = make_project()
    body = client.get(f"{URL}/{project.id}/usage").json
    assert body == {
        "project_id": str(project.id),
        "logs": 0,
        "points": 0,
        "rollups": 0,
        "oldest": None,
        "newest": None,
        "storage_bytes": 0,
    }


def test_usage_of_another_project_is_not_counted(client, busy):
    other = make_project()
    make_logs(make_service(other), 2)
    assert client.get(f"{URL}/{busy.id}/usage").json["logs"] == 5
    assert client.get(f"{URL}/{other.id}/usage").json["logs"] == 2


@pytest.mark.parametrize("project_id", [UNKNOWN_ID, "not-an-id"])
def test_usage_of_an_unknown_project_is_404(client, ctx, project_id):
    assert client.get(f"{URL}/{project_id}/usage").status_code == 404


@pytest.mark.parametrize(("role", "status"), [("viewer", 200), ("editor", 200), ("admin", 200)])
def test_every_role_reads_usage(app, busy, role, status):
    assert client_as(app, role).get(f"{URL}/{busy.id}/usage").status_code == status


def test_anonymous_callers_get_401(app, busy):
    assert app.test_client().get(f"{URL}/{busy.id}/usage").status_code == 401


def test_the_projects_list_sorts_by_usage_largest_first(client, busy):
    small = make_project(name="aaa-small")
    make_logs(make_service(small), 1)
    empty = make_project(name="aaa-empty")

    response = client.get(f"{URL}/", query_string={"sort": "usage"})

    assert response.status_code == 200
    names = [p["name"] for p in response.json]
    assert names == ["busy", "aaa-small", "aaa-empty"]
    assert response.json[1]["microservices"]  # the same views as any other sort
    paged = client.get(f"{URL}/", query_string={"sort": "usage", "page": 2, "page_size": 1})
    assert [p["name"] for p in paged.json] == ["aaa-small"]
    assert str(empty.id) in {p["id"] for p in response.json}


def test_usage_sort_keeps_the_filters(client, busy):
    make_project(name="other", owner="x")
    response = client.get(f"{URL}/", query_string={"sort": "usage", "q": "bus"})
    assert [p["name"] for p in response.json] == ["busy"]


def test_usage_at_the_service_layer_merges_every_domain(busy):
    usage = projects.usage_of([busy.id])[busy.id]
    assert (usage["logs"], usage["points"], usage["rollups"]) == (5, 3, 6)
    assert usage["oldest"] == at(1)
