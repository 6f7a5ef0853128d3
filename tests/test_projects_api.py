"""Projects through the HTTP API.

Rules every JSON endpoint shares (media type, malformed JSON, a body of the wrong JSON
type) are tested once for every endpoint in ``test_hostile_inputs.py``; what deleting a
project does to its logs and metrics, with those (``test_logs_api.py``,
``test_metrics_api.py``).
"""

from __future__ import annotations

import json

import pytest

from polymicro.projects.models import Project
from polymicro.services.models import Service
from tests.factories import created, make_project, make_service

MISSING_ID = "0123456789abcdef01234567"


def create(client, **body):
    """Create a project through the API (named "Alpha" unless given)."""
    return created(client, "/api/projects", {"name": "Alpha", **body})


def pagination(response) -> dict:
    return json.loads(response.headers["X-Pagination"])


class TestCreate:
    def test_returns_201_with_defaults_and_canonical_id(self, client):
        body = create(client, name="  Alpha  ")
        assert body["name"] == "Alpha"
        assert body["description"] == ""
        assert body["tests_dir_path"] == "tests"
        assert body["tags"] == []
        assert body["microservices"] == []
        assert len(body["id"]) == 24
        assert body["created_at"].endswith("Z")
        assert body["created_at"] == body["updated_at"]
        fetched = client.get(f"/api/projects/{body['id']}").json
        listed = client.get("/api/projects").json
        assert fetched == body
        assert listed == [body]

    def test_tags_are_lower_cased_and_deduplicated(self, client):
        body = create(client, tags=["Web", "web", "api.v2"])
        assert body["tags"] == ["web", "api.v2"]

    def test_duplicate_name_is_409_case_insensitively(self, client):
        create(client, name="Alpha")
        response = client.post("/api/projects", json={"name": " ALPHA "})
        assert response.status_code == 409
        assert response.json["code"] == 409
        assert "already exists" in response.json["message"]
        assert Project.objects.count() == 1

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "name"),
            ({"name": ""}, "name"),
            ({"name": "   "}, "name"),
            ({"name": "x" * 101}, "name"),
            ({"name": 5}, "name"),
            ({"name": None}, "name"),
            ({"name": "ok", "description": "d" * 2001}, "description"),
            ({"name": "ok", "owner": "o" * 101}, "owner"),
            ({"name": "ok", "tags": "web"}, "tags"),
            ({"name": "ok", "tags": ["bad tag"]}, "tags"),
            ({"name": "ok", "tags": [""]}, "tags"),
            ({"name": "ok", "tags": ["t" * 51]}, "tags"),
            ({"name": "ok", "tags": [f"t{i}" for i in range(21)]}, "tags"),
            ({"name": "ok", "path": "p" * 1025}, "path"),
            ({"name": "ok", "id": MISSING_ID}, "id"),
            ({"name": "ok", "microservices": []}, "microservices"),
            ({"name": "ok", "created_at": "2026-01-01T00:00:00Z"}, "created_at"),
            ({"name": "ok", "color": "red"}, "color"),
            ({"name": "x\ud800"}, "name"),
            ({"name": "ok", "owner": "\udfff"}, "owner"),
        ],
    )
    def test_invalid_body_is_422_naming_the_field_and_stores_nothing(self, client, body, field):
        response = client.post("/api/projects", json=body)
        assert response.status_code == 422
        assert field in response.json["errors"]["json"]
        assert response.json["message"]
        assert Project.objects.count() == 0


class TestRead:
    @pytest.mark.parametrize(
        "project_id", [MISSING_ID, "abc", "0123456789abcdef0123456z", "1" * 25]
    )
    def test_unknown_or_malformed_id_is_404(self, client, project_id):
        for method in ("get", "put", "patch", "delete"):
            response = getattr(client, method)(f"/api/projects/{project_id}", json={})
            assert response.status_code == 404, method
            assert response.json["code"] == 404

    def test_trailing_slash_is_optional_without_redirect(self, client):
        create(client)
        with_slash = client.get("/api/projects/")
        without = client.get("/api/projects")
        assert with_slash.status_code == without.status_code == 200
        assert with_slash.json == without.json
        assert client.post("/api/projects/", json={"name": "Beta"}).status_code == 201

    def test_microservices_in_dashboard_shape(self, client):
        project = create(client)
        service = client.post(
            "/api/services",
            json={
                "project_id": project["id"],
                "name": "api",
                "status": "running",
                "health": "HEALTHY",
                "version": "1.2.3",
                "port": 8080,
                "url": "http://localhost:8080",
                "uptime": "3d",
                "last_deployment": "2026-11-20T10:00:00+01:00",
            },
        ).json
        body = client.get(f"/api/projects/{project['id']}").json
        assert body["microservices"] == [
            {
                "id": service["id"],
                "name": "api",
                "type": "microservice",
                "projectId": project["id"],
                "status": "Running",
                "health": "Healthy",
                "version": "1.2.3",
                "lastDeployed": "2026-11-20T09:00:00.000Z",
                "port": 8080,
                "url": "http://localhost:8080",
                "uptime": "3d",
                "children": [],
            }
        ]
        assert client.get("/api/projects").json[0]["microservices"] == body["microservices"]

    def test_list_fetches_services_for_all_projects_in_one_query(self, ctx, client, monkeypatch):
        from polymicro.services import service as services

        for i in range(3):
            pid = create(client, name=f"p{i}")["id"]
            client.post("/api/services", json={"project_id": pid, "name": "svc"})
        calls = []
        original = services.services_by_project
        monkeypatch.setattr(
            services,
            "services_by_project",
            lambda ids: calls.append(list(ids)) or original(ids),
        )
        body = client.get("/api/projects").json
        assert len(calls) == 1
        assert len(calls[0]) == 3
        assert all(len(p["microservices"]) == 1 for p in body)


class TestListing:
    @pytest.fixture
    def seeded(self, client):
        create(client, name="Billing", owner="team-a", tags=["pay"])
        create(client, name="billing-worker", owner="team-b", tags=["pay", "jobs"])
        create(client, name="Catalog", owner="team-a")
        create(client, name="a.b*c", owner="team-c")

    @pytest.mark.parametrize(
        ("query", "names"),
        [
            ("", ["a.b*c", "Billing", "billing-worker", "Catalog"]),
            ("?q=BILL", ["Billing", "billing-worker"]),
            ("?q=.", ["a.b*c"]),
            ("?q=*", ["a.b*c"]),
            ("?q=b*c", ["a.b*c"]),
            ("?q=(", []),
            ("?q=.*", []),
            ("?q=[", []),
            ("?owner=team-a", ["Billing", "Catalog"]),
            ("?tag=PAY", ["Billing", "billing-worker"]),
            ("?tag=jobs&owner=team-b", ["billing-worker"]),
            ("?sort=-name", ["Catalog", "billing-worker", "Billing", "a.b*c"]),
            ("?sort=created_at", ["Billing", "billing-worker", "Catalog", "a.b*c"]),
            ("?sort=-created_at", ["a.b*c", "Catalog", "billing-worker", "Billing"]),
        ],
    )
    def test_filters_and_sorts(self, client, seeded, query, names):
        response = client.get(f"/api/projects{query}")
        assert response.status_code == 200
        assert [p["name"] for p in response.json] == names

    @pytest.mark.parametrize(
        "query",
        [
            "?sort=size",
            "?page=0",
            "?page=-1",
            "?page=abc",
            "?page_size=0",
            "?page_size=1001",
            "?page_size=-5",
            "?q=a%00b",
            "?page_size=1.5",
            "?q=" + "x" * 101,
        ],
    )
    def test_bad_query_is_422(self, client, query):
        response = client.get(f"/api/projects{query}")
        assert response.status_code == 422
        assert "query" in response.json["errors"]

    def test_pagination_walks_every_item_once(self, client):
        for i in range(7):
            create(client, name=f"p{i:02d}")
        seen = []
        page = 1
        while True:
            response = client.get(f"/api/projects?page_size=3&page={page}")
            meta = pagination(response)
            assert meta["total"] == 7
            assert meta["total_pages"] == 3
            seen += [p["name"] for p in response.json]
            if "next_page" not in meta:
                break
            page = meta["next_page"]
        assert seen == [f"p{i:02d}" for i in range(7)]
        last = client.get("/api/projects?page_size=3&page=3")
        assert pagination(last) == {
            "total": 7,
            "total_pages": 3,
            "first_page": 1,
            "last_page": 3,
            "page": 3,
            "previous_page": 2,
        }

    def test_default_page_size_is_100_and_max_1000(self, client, ctx):
        Project.objects.insert(
            [Project(name=f"n{i:04d}", name_key=f"n{i:04d}") for i in range(1001)], load_bulk=False
        )
        first = client.get("/api/projects")
        assert len(first.json) == 100
        assert pagination(first)["total"] == 1001
        big = client.get("/api/projects?page_size=1000&page=2")
        assert [p["name"] for p in big.json] == ["n1000"]

    @pytest.mark.parametrize("page", [4, 10**6, 10**30])
    def test_page_past_the_end_is_empty_not_an_error(self, client, page):
        create(client)
        response = client.get(f"/api/projects?page={page}")
        assert response.status_code == 200
        assert response.json == []
        assert pagination(response)["total"] == 1


class TestUpdate:
    @pytest.mark.parametrize("method", ["put", "patch"])
    def test_partial_update_keeps_other_fields(self, client, method):
        project = create(client, description="first", owner="me")
        response = getattr(client, method)(
            f"/api/projects/{project['id']}", json={"description": " second "}
        )
        assert response.status_code == 200
        assert response.json["description"] == "second"
        assert response.json["owner"] == "me"
        assert response.json["name"] == "Alpha"
        assert response.json["updated_at"] >= project["updated_at"]

    def test_noop_update_is_200_and_keeps_updated_at(self, client):
        project = create(client, owner="me")
        for body in ({}, {"owner": "me"}, {"name": "Alpha"}):
            response = client.patch(f"/api/projects/{project['id']}", json=body)
            assert response.status_code == 200
            assert response.json == project

    def test_rename_to_a_taken_name_is_409_and_changes_nothing(self, client):
        create(client, name="Alpha")
        beta = create(client, name="Beta")
        response = client.patch(f"/api/projects/{beta['id']}", json={"name": "alpha"})
        assert response.status_code == 409
        assert client.get(f"/api/projects/{beta['id']}").json["name"] == "Beta"

    def test_changing_only_the_case_of_its_own_name_is_allowed(self, client):
        project = create(client, name="Alpha")
        response = client.put(f"/api/projects/{project['id']}", json={"name": "ALPHA"})
        assert response.status_code == 200
        assert response.json["name"] == "ALPHA"

    @pytest.mark.parametrize(
        "body", [{"name": ""}, {"name": None}, {"tags": ["A B"]}, {"id": MISSING_ID}, {"x": 1}]
    )
    def test_invalid_update_is_422_and_changes_nothing(self, client, body):
        project = create(client)
        response = client.patch(f"/api/projects/{project['id']}", json=body)
        assert response.status_code == 422
        assert client.get(f"/api/projects/{project['id']}").json == project

    def test_owner_can_be_cleared_with_null(self, client):
        project = create(client, owner="me")
        response = client.patch(f"/api/projects/{project['id']}", json={"owner": None})
        assert response.json["owner"] is None


class TestETag:
    def test_if_none_match_gives_304(self, client):
        project = create(client)
        first = client.get(f"/api/projects/{project['id']}")
        etag = first.headers["ETag"]
        again = client.get(f"/api/projects/{project['id']}", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.data == b""

    def test_etag_changes_when_the_project_changes(self, client):
        project = create(client)
        etag = client.get(f"/api/projects/{project['id']}").headers["ETag"]
        client.patch(f"/api/projects/{project['id']}", json={"owner": "new"})
        response = client.get(f"/api/projects/{project['id']}", headers={"If-None-Match": etag})
        assert response.status_code == 200
        assert response.headers["ETag"] != etag

    @pytest.mark.parametrize("method", ["put", "patch", "delete"])
    def test_stale_if_match_is_412_and_changes_nothing(self, client, method):
        project = create(client)
        url = f"/api/projects/{project['id']}"
        response = getattr(client, method)(
            url, json={"owner": "x"}, headers={"If-Match": '"stale"'}
        )
        assert response.status_code == 412
        assert client.get(url).json == project

    def test_fresh_if_match_is_accepted(self, client):
        project = create(client)
        url = f"/api/projects/{project['id']}"
        etag = client.get(url).headers["ETag"]
        assert client.patch(url, json={"owner": "x"}, headers={"If-Match": etag}).status_code == 200
        assert client.delete(url, headers={"If-Match": etag}).status_code == 412
        fresh = client.get(url).headers["ETag"]
        assert client.delete(url, headers={"If-Match": fresh}).status_code == 204


class TestDelete:
    def test_delete_is_204_then_404(self, client):
        project = create(client)
        response = client.delete(f"/api/projects/{project['id']}")
        assert response.status_code == 204
        assert response.data == b""
        assert client.get(f"/api/projects/{project['id']}").status_code == 404

    def test_delete_cascades_to_the_services_of_that_project_only(self, client, ctx):
        doomed, kept = make_project(name="doomed"), make_project(name="kept")
        make_service(doomed)
        survivor = make_service(kept)

        assert client.delete(f"/api/projects/{doomed.id}").status_code == 204

        assert Service.objects(project_id=doomed.id).count() == 0
        assert [s["id"] for s in client.get("/api/services").json] == [str(survivor.id)]
