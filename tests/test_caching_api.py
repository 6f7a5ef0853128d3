"""The cached reads through the API: they are cached, and no write leaves them stale.

Runs on SimpleCache by default and on the real Redis in the wire run
(``POLYMICRO_TEST_REDIS_URL``).  Each "is cached" test changes the database behind the
service layer's back (no invalidation) and sees the old answer; each write-path test
primes the same reads, writes through the API and must see the new answer.
"""

from __future__ import annotations

import pytest

from polymicro.logs.models import LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint
from polymicro.projects.models import Project
from polymicro.services.models import Service
from tests.factories import as_json, created, log_body, make_metric, make_project, make_service


@pytest.fixture
def world(ctx) -> dict[str, str]:
    """Project "Shop" with service "api" (Running) and its CPU entry of one point."""
    project = make_project(name="Shop")
    svc = make_service(project, name="api", status="Running")
    metric = make_metric(svc, points=[{"load": 1.0}])
    return as_json({"pid": project.id, "sid": svc.id, "mid": metric.id})


def urls(world) -> dict[str, str]:
    pid, sid = world["pid"], world["sid"]
    return {
        "projects": "/api/projects",
        "project": f"/api/projects/{pid}",
        "project_services": f"/api/services/project/{pid}",
        "services": "/api/services",
        "service": f"/api/services/{sid}",
        "project_metrics": f"/api/metrics/cpu/project/{pid}",
    }


def prime(client, *paths):
    for path in paths:
        for _ in range(2):
            assert client.get(path).status_code == 200, path


class TestReadsAreCached:
    """A change that skips the service layer (so skips invalidation) stays invisible."""

    def test_project_reads(self, client, world):
        u = urls(world)
        prime(client, u["projects"], u["project"])
        Project.objects(id=world["pid"]).update(set__owner="sneaky")
        assert client.get(u["project"]).json["owner"] is None
        assert client.get(u["projects"]).json[0]["owner"] is None

    def test_service_reads(self, client, world):
        u = urls(world)
        prime(client, u["service"], u["project_services"], u["services"])
        Service.objects(id=world["sid"]).update(set__version="sneaky")
        assert client.get(u["service"]).json["version"] is None
        assert client.get(u["project_services"]).json[0]["version"] is None
        assert client.get(u["services"]).json[0]["version"] is None

    def test_project_metrics(self, client, world):
        u = urls(world)
        prime(client, u["project_metrics"])
        CpuPoint(metric_id=world["mid"], load=99.0).save()
        assert [p["load"] for p in client.get(u["project_metrics"]).json[0]["data"]] == [1.0]

    def test_keys_differ_by_query_and_page(self, client, world):
        client.post("/api/projects", json={"name": "Tools", "owner": "ops"})
        all_projects = client.get("/api/projects").json
        assert [p["name"] for p in all_projects] == ["Shop", "Tools"]
        assert [p["name"] for p in client.get("/api/projects?owner=ops").json] == ["Tools"]
        assert [p["name"] for p in client.get("/api/projects?q=sh").json] == ["Shop"]
        assert [p["name"] for p in client.get("/api/projects?page_size=1").json] == ["Shop"]
        page2 = client.get("/api/projects?page_size=1&page=2")
        assert [p["name"] for p in page2.json] == ["Tools"]
        assert [p["name"] for p in client.get("/api/projects?sort=-name").json] == [
            "Tools",
            "Shop",
        ]
        metrics = f"/api/metrics/cpu/project/{world['pid']}"
        assert client.get(f"{metrics}?points=1").json[0]["data"] != []
        assert client.get(f"{metrics}?since=2000-01-01&until=2000-01-02").json[0]["data"] == []


class TestWritesInvalidate:
    def test_create_project(self, client, world):
        prime(client, "/api/projects")
        client.post("/api/projects", json={"name": "New"})
        assert [p["name"] for p in client.get("/api/projects").json] == ["New", "Shop"]

    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_update_project(self, client, world, method):
        u = urls(world)
        prime(client, u["projects"], u["project"])
        getattr(client, method)(u["project"], json={"owner": "me"})
        assert client.get(u["project"]).json["owner"] == "me"
        assert client.get(u["projects"]).json[0]["owner"] == "me"

    def test_delete_project(self, client, world):
        u = urls(world)
        prime(client, u["projects"], u["project"], u["project_services"], u["service"])
        prime(client, u["services"], u["project_metrics"])
        assert client.delete(u["project"]).status_code == 204
        assert client.get(u["projects"]).json == []
        assert client.get(u["services"]).json == []
        for gone in ("project", "project_services", "service", "project_metrics"):
            assert client.get(u[gone]).status_code == 404, gone

    def test_create_service(self, client, world):
        u = urls(world)
        prime(client, u["projects"], u["project"], u["project_services"], u["services"])
        client.post("/api/services", json={"project_id": world["pid"], "name": "web"})
        assert [s["name"] for s in client.get(u["project"]).json["microservices"]] == [
            "api",
            "web",
        ]
        assert len(client.get(u["projects"]).json[0]["microservices"]) == 2
        assert [s["name"] for s in client.get(u["project_services"]).json] == ["api", "web"]
        assert len(client.get(u["services"]).json) == 2

    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_update_service(self, client, world, method):
        u = urls(world)
        prime(client, u["projects"], u["project"], u["project_services"], u["service"])
        getattr(client, method)(u["service"], json={"health": "critical"})
        assert client.get(u["service"]).json["health"] == "Critical"
        assert client.get(u["project"]).json["microservices"][0]["health"] == "Critical"
        assert client.get(u["projects"]).json[0]["microservices"][0]["health"] == "Critical"
        assert client.get(u["project_services"]).json[0]["health"] == "Critical"

    def test_rename_service_renames_the_cached_metrics_entry(self, client, world):
        u = urls(world)
        prime(client, u["project_metrics"])
        client.patch(u["service"], json={"name": "gateway"})
        assert client.get(u["project_metrics"]).json[0]["service_name"] == "gateway"

    def test_delete_service(self, client, world):
        u = urls(world)
        prime(client, u["project"], u["project_services"], u["service"], u["project_metrics"])
        assert client.delete(u["service"]).status_code == 204
        assert client.get(u["service"]).status_code == 404
        assert client.get(u["project"]).json["microservices"] == []
        assert client.get(u["project_services"]).json == []
        assert client.get(u["project_metrics"]).json == []

    def test_create_metric(self, client, world):
        u = urls(world)
        client.post("/api/services", json={"project_id": world["pid"], "name": "web"})
        prime(client, u["project_metrics"])
        client.post("/api/metrics/cpu", json={"project_id": world["pid"], "service_name": "web"})
        assert len(client.get(u["project_metrics"]).json) == 2

    @pytest.mark.parametrize("body", [{"load": 7.0}, [{"load": 7.0}, {"load": 8.0}]])
    def test_append_points(self, client, world, body):
        u = urls(world)
        prime(client, u["project_metrics"])
        client.post(f"/api/metrics/cpu/{world['mid']}/data", json=body)
        loads = [p["load"] for p in client.get(u["project_metrics"]).json[0]["data"]]
        assert loads[0] == 1.0
        assert 7.0 in loads

    def test_replace_points(self, client, world):
        u = urls(world)
        prime(client, u["project_metrics"])
        client.put(f"/api/metrics/cpu/{world['mid']}", json={"data": [{"load": 5.0}]})
        assert [p["load"] for p in client.get(u["project_metrics"]).json[0]["data"]] == [5.0]

    def test_delete_metric(self, client, world):
        u = urls(world)
        prime(client, u["project_metrics"])
        client.delete(f"/api/metrics/cpu/{world['mid']}")
        assert client.get(u["project_metrics"]).json == []
        assert CpuMetric.objects.count() == 0


class TestLogLists:
    @pytest.fixture
    def logged(self, client, world):
        """``world`` with one error log "first" and the log lists that show it."""
        pid, sid = world["pid"], world["sid"]
        world["body"] = log_body(project_id=pid, service_id=sid, severity="error", message="first")
        world["lid"] = created(client, "/api/logs", world["body"])["id"]
        world["lists"] = [
            "/api/logs",
            f"/api/logs?project_id={pid}",
            f"/api/logs/project/{pid}",
            f"/api/logs/service/{sid}",
            f"/api/logs?project_id={pid}&severity=error",
        ]
        return world

    def messages(self, client, path):
        return [entry["message"] for entry in client.get(path).json]

    def test_log_lists_are_cached(self, client, logged):
        prime(client, *logged["lists"])
        LogEntry.objects(id=logged["lid"]).update(set__message="sneaky")
        for path in logged["lists"]:
            assert self.messages(client, path) == ["first"], path

    def test_single_post(self, client, logged):
        prime(client, *logged["lists"])
        client.post("/api/logs", json=dict(logged["body"], message="second"))
        for path in logged["lists"]:
            assert self.messages(client, path) == ["second", "first"], path

    def test_batch(self, client, logged):
        prime(client, *logged["lists"])
        client.post("/api/logs/batch", json=[dict(logged["body"], message="second")])
        for path in logged["lists"]:
            assert self.messages(client, path) == ["second", "first"], path

    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_update(self, client, logged, method):
        prime(client, *logged["lists"])
        getattr(client, method)(f"/api/logs/{logged['lid']}", json={"message": "edited"})
        for path in logged["lists"]:
            assert self.messages(client, path) == ["edited"], path

    def test_delete(self, client, logged):
        prime(client, *logged["lists"])
        client.delete(f"/api/logs/{logged['lid']}")
        for path in logged["lists"]:
            assert self.messages(client, path) == [], path

    def test_service_delete_cascade(self, client, logged):
        prime(client, *logged["lists"])
        client.delete(f"/api/services/{logged['sid']}")
        assert client.get(logged["lists"][3]).status_code == 404
        for path in logged["lists"][:3]:
            assert self.messages(client, path) == [], path

    def test_project_delete_cascade(self, client, logged):
        prime(client, *logged["lists"])
        client.delete(f"/api/projects/{logged['pid']}")
        assert self.messages(client, "/api/logs") == []
        assert client.get(logged["lists"][2]).status_code == 404
        assert client.get(logged["lists"][3]).status_code == 404


class TestResponseCache:
    def test_a_cached_answer_keeps_its_body_and_pagination_header(self, client, world):
        first = client.get("/api/projects?page_size=1")
        second = client.get("/api/projects?page_size=1")
        assert second.get_data() == first.get_data()
        assert second.headers["X-Pagination"] == first.headers["X-Pagination"]
        assert second.headers["Content-Type"] == "application/json"

    def test_a_cached_item_answers_if_none_match_with_304(self, client, world):
        url = f"/api/projects/{world['pid']}"
        etag = client.get(url).headers["ETag"]
        cached = client.get(url)
        assert cached.headers["ETag"] == etag
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304

    def test_authorization_comes_before_the_cache(self, client, anon_client, world):
        prime(client, *urls(world).values())
        for path in urls(world).values():
            assert anon_client.get(path).status_code == 401, path

    def test_errors_are_not_cached(self, client, world):
        missing = "/api/projects/0123456789abcdef01234567"
        assert client.get(missing).status_code == 404
        # Stored behind the service layer's back (no invalidation): only a 404 that was
        # not cached lets the next read see it.
        Project(id="0123456789abcdef01234567", name="Late", name_key="late").save()
        assert client.get(missing).status_code == 200
