"""Services through the HTTP API."""

from __future__ import annotations

import pytest

from polymicro.services.models import Service
from tests.factories import created

MISSING_ID = "0123456789abcdef01234567"


@pytest.fixture
def project(client):
    return created(client, "/api/projects", {"name": "Shop"})


@pytest.fixture
def other(client):
    """Another project."""
    return created(client, "/api/projects", {"name": "Other"})


def create(client, project, **body):
    """Create a service of ``project`` through the API (named "api" unless given)."""
    return created(client, "/api/services", {"project_id": project["id"], "name": "api", **body})


class TestCreate:
    def test_defaults_and_one_canonical_id(self, client, project):
        body = create(client, project, name=" api ")
        assert body["name"] == "api"
        assert body["status"] == "Unknown"
        assert body["health"] == "Unknown"
        assert body["project_id"] == project["id"]
        assert client.get(f"/api/services/{body['id']}").json == body
        assert client.get("/api/services/").json == [body]

    @pytest.mark.parametrize(
        ("given", "stored"),
        [
            ("running", "Running"),
            ("STOPPED", "Stopped"),
            (" Error ", "Error"),
            ("unknown", "Unknown"),
        ],
    )
    def test_status_is_case_insensitive(self, client, project, given, stored):
        assert create(client, project, status=given)["status"] == stored

    def test_health_is_case_insensitive(self, client, project):
        assert create(client, project, health="degraded")["health"] == "Degraded"

    def test_same_name_in_same_project_is_409(self, client, project):
        create(client, project, name="api")
        response = client.post("/api/services", json={"project_id": project["id"], "name": "API"})
        assert response.status_code == 409
        assert Service.objects.count() == 1

    def test_same_name_in_another_project_is_allowed(self, client, project, other):
        create(client, project, name="api")
        create(client, other, name="api")
        assert Service.objects.count() == 2

    def test_unknown_project_is_422(self, client):
        response = client.post("/api/services", json={"project_id": MISSING_ID, "name": "api"})
        assert response.status_code == 422
        assert "project_id" in response.json["errors"]["json"]
        assert Service.objects.count() == 0

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"name": "x"}, "project_id"),
            ({"project_id": "nothex", "name": "x"}, "project_id"),
            ({"project_id": 12, "name": "x"}, "project_id"),
            ({"project_id": "@", "name": ""}, "name"),
            ({"project_id": "@", "name": "n" * 101}, "name"),
            ({"project_id": "@", "name": "x", "port": 0}, "port"),
            ({"project_id": "@", "name": "x", "port": 65536}, "port"),
            ({"project_id": "@", "name": "x", "port": 80.5}, "port"),
            ({"project_id": "@", "name": "x", "port": "80"}, "port"),
            ({"project_id": "@", "name": "x", "port": True}, "port"),
            ({"project_id": "@", "name": "x", "url": "ftp://host"}, "url"),
            ({"project_id": "@", "name": "x", "url": "not a url"}, "url"),
            ({"project_id": "@", "name": "x", "status": "sleeping"}, "status"),
            ({"project_id": "@", "name": "x", "health": 3}, "health"),
            ({"project_id": "@", "name": "x", "version": "v" * 65}, "version"),
            ({"project_id": "@", "name": "x", "uptime": "u" * 65}, "uptime"),
            ({"project_id": "@", "name": "x", "container_name": "c" * 256}, "container_name"),
            ({"project_id": "@", "name": "x", "last_deployment": "yesterday"}, "last_deployment"),
            ({"project_id": "@", "name": "x", "last_deployment": "2026-13-01"}, "last_deployment"),
            ({"project_id": "@", "name": "x", "tags": ["UPPER CASE"]}, "tags"),
            ({"project_id": "@", "name": "x", "owner": "me"}, "owner"),
        ],
    )
    def test_invalid_body_is_422_and_stores_nothing(self, client, project, body, field):
        body = {k: (project["id"] if v == "@" else v) for k, v in body.items()}
        response = client.post("/api/services", json=body)
        assert response.status_code == 422
        assert field in response.json["errors"]["json"]
        assert Service.objects.count() == 0

    @pytest.mark.parametrize(
        ("given", "stored"),
        [
            ("2026-11-26T18:10:47.123456+02:00", "2026-11-26T16:10:47.123Z"),
            ("2026-11-26T18:10:47Z", "2026-11-26T18:10:47.000Z"),
            ("2026-11-26T18:10:47", "2026-11-26T18:10:47.000Z"),
            ("2026-11-26 18:10:47", "2026-11-26T18:10:47.000Z"),
        ],
    )
    def test_times_in_any_offset_come_back_in_utc(self, client, project, given, stored):
        assert create(client, project, last_deployment=given)["last_deployment"] == stored


class TestRead:
    @pytest.mark.parametrize("service_id", [MISSING_ID, "xyz", "0" * 23])
    def test_unknown_or_malformed_id_is_404(self, client, service_id):
        for method in ("get", "put", "patch", "delete"):
            response = getattr(client, method)(f"/api/services/{service_id}", json={})
            assert response.status_code == 404, method

    def test_services_of_project(self, client, project, other):
        create(client, project, name="b")
        create(client, project, name="a")
        create(client, other, name="c")
        response = client.get(f"/api/services/project/{project['id']}")
        assert [s["name"] for s in response.json] == ["a", "b"]
        assert client.get(f"/api/services/project/{project['id']}/").status_code == 200

    @pytest.mark.parametrize("project_id", [MISSING_ID, "nope"])
    def test_services_of_unknown_project_is_404(self, client, project_id):
        assert client.get(f"/api/services/project/{project_id}").status_code == 404

    def test_filters(self, client, project, other):
        create(client, project, name="web-api", status="Running", health="Healthy")
        create(client, project, name="worker", status="Stopped", health="Critical")
        create(client, other, name="web.ui", status="running", health="warning")
        cases = {
            f"?project_id={project['id']}": ["web-api", "worker"],
            "?status=RUNNING": ["web-api", "web.ui"],
            "?health=critical": ["worker"],
            "?q=WEB": ["web-api", "web.ui"],
            "?q=.": ["web.ui"],
            "?q=web.": ["web.ui"],
            "?q=^w": [],
            f"?status=running&project_id={other['id']}": ["web.ui"],
        }
        for query, names in cases.items():
            assert [s["name"] for s in client.get(f"/api/services{query}").json] == names, query

    @pytest.mark.parametrize("query", ["?status=asleep", "?health=ok", "?project_id=zzz"])
    def test_bad_filter_is_422(self, client, query):
        assert client.get(f"/api/services{query}").status_code == 422


class TestUpdate:
    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_partial_update(self, client, project, method):
        svc = create(client, project, port=80, status="Running")
        response = getattr(client, method)(
            f"/api/services/{svc['id']}", json={"status": "stopped", "version": "2.0"}
        )
        assert response.status_code == 200
        assert response.json["status"] == "Stopped"
        assert response.json["version"] == "2.0"
        assert response.json["port"] == 80

    def test_noop_update_is_200(self, client, project):
        svc = create(client, project, port=80)
        for body in ({}, {"port": 80}, {"project_id": project["id"]}):
            response = client.patch(f"/api/services/{svc['id']}", json=body)
            assert response.status_code == 200
            assert response.json == svc

    def test_project_id_cannot_change(self, client, project, other):
        svc = create(client, project)
        response = client.patch(f"/api/services/{svc['id']}", json={"project_id": other["id"]})
        assert response.status_code == 422
        assert "project_id" in response.json["errors"]["json"]
        assert client.get(f"/api/services/{svc['id']}").json["project_id"] == project["id"]

    def test_rename_to_a_taken_name_is_409(self, client, project):
        create(client, project, name="a")
        b = create(client, project, name="b")
        response = client.patch(f"/api/services/{b['id']}", json={"name": "A"})
        assert response.status_code == 409
        assert client.get(f"/api/services/{b['id']}").json["name"] == "b"

    def test_stale_if_match_is_412(self, client, project):
        svc = create(client, project)
        url = f"/api/services/{svc['id']}"
        etag = client.get(url).headers["ETag"]
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert client.patch(url, json={"port": 1}, headers={"If-Match": '"x"'}).status_code == 412
        assert client.patch(url, json={"port": 1}, headers={"If-Match": etag}).status_code == 200


class TestDelete:
    """What the deletion does to the service's logs and metrics is tested with those
    (``test_logs_api.py``, ``test_metrics_api.py``)."""

    def test_delete_is_204_then_404(self, client, project):
        doomed = create(client, project, name="doomed")
        kept = create(client, project, name="kept")
        response = client.delete(f"/api/services/{doomed['id']}")
        assert response.status_code == 204
        assert response.data == b""
        assert client.get(f"/api/services/{doomed['id']}").status_code == 404
        assert client.delete(f"/api/services/{doomed['id']}").status_code == 404
        assert [s["id"] for s in client.get("/api/services").json] == [kept["id"]]
