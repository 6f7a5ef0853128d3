"""API versioning (issue 15, item 3): every endpoint under /api/v1 (canonical) and under
/api (the dashboard's paths), one behaviour; the OpenAPI document shows v1 as canonical
and the old paths as aliases; a route can be marked deprecated (Deprecation, Sunset,
Link headers).  The role matrix runs under both prefixes in test_access_matrix.py."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from flask.views import MethodView

import polymicro
from polymicro.common import versioning
from polymicro.common.blueprint import Blueprint
from polymicro.common.versioning import deprecated
from polymicro.extensions import close_db
from polymicro.projects import service as projects_service
from polymicro.security import access
from tests.conftest import client_as, make_config
from tests.factories import make_project
from tests.limits_helpers import limited_app

V1 = "/api/v1"


def _twin(path: str) -> str:
    """/api/x → /api/v1/x"""
    return V1 + path.removeprefix("/api")


# --- one view, two rules ------------------------------------------------------------------


def _api_rules(app):
    return [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")]


def test_every_endpoint_is_served_under_v1_and_unversioned_by_the_same_view(app):
    rules = _api_rules(app)
    v1 = {rule.rule.removeprefix(V1): rule for rule in rules if rule.rule.startswith(V1 + "/")}
    aliases = {r.rule.removeprefix("/api"): r for r in rules if not r.rule.startswith(V1 + "/")}
    assert set(v1) == set(aliases)
    assert len(v1) >= 27  # every route of the contract (more as the API grows)
    for tail, rule in v1.items():
        alias = aliases[tail]
        assert alias.methods == rule.methods, tail
        assert app.view_functions[alias.endpoint] is app.view_functions[rule.endpoint], tail
        assert versioning.canonical_endpoint(alias.endpoint) == rule.endpoint


@pytest.mark.parametrize(
    ("path", "unversioned", "versioned"),
    [
        ("/api/v1/projects/1", "/api/projects/1", "/api/v1/projects/1"),
        ("/api/projects/1", "/api/projects/1", "/api/v1/projects/1"),
        ("/api/v1", "/api", "/api/v1"),
        ("/api/v10/x", "/api/v10/x", "/api/v1/v10/x"),  # not the v1 prefix
        ("/metrics", "/metrics", None),  # outside /api: no twin
    ],
)
def test_paths_map_between_the_twins(path, unversioned, versioned):
    assert versioning.unversioned_path(path) == unversioned
    if versioned is not None:
        assert versioning.versioned_path(path) == versioned


@pytest.mark.parametrize("prefix", ["/otlp", "/api/v1/projects", ""])
def test_only_unversioned_api_blueprints_can_be_versioned(prefix):
    blueprint = Blueprint("elsewhere", __name__, url_prefix=prefix or None)
    with pytest.raises(ValueError, match="url_prefix"):
        versioning._tail(blueprint)


# --- the same behaviour -------------------------------------------------------------------

# (method, path, body, headers): each sent to /api/... and to /api/v1/...; the status, the
# body and the headers that carry behaviour must be identical.
SAME_ANSWERS = [
    ("GET", "/api/projects?page_size=1&page=2&sort=name", None, {}),
    ("GET", "/api/projects/{pid}", None, {}),
    ("GET", "/api/projects/{unknown}", None, {}),
    ("GET", "/api/projects/not-an-id", None, {}),
    ("GET", "/api/projects?sort=sideways", None, {}),
    ("GET", "/api/logs/project/{pid}?severity=loud", None, {}),
    ("POST", "/api/projects", {"name": ""}, {}),
    ("POST", "/api/projects", {"name": "First"}, {}),  # a duplicate name: 409
    ("POST", "/api/projects", b"name=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("DELETE", "/api/projects", None, {}),  # 405 with Allow
    ("GET", "/api/auth/me", None, {"Authorization": "Bearer not-a-token"}),
    ("GET", "/api/metrics/cpu/project/{pid}", None, {}),
    ("GET", "/api/health/live", None, {}),
]
COMPARED_HEADERS = ("X-Pagination", "ETag", "Allow", "WWW-Authenticate", "Cache-Control")


@pytest.fixture
def shop(app):
    """Three projects.  Made in an app context of their own: flask-smorest keeps a
    request's ETag on the app context, so requests sent inside one pushed around them
    (the ``ctx`` fixture) would see each other's ETags, which a server never does."""
    with app.app_context():
        first = make_project(name="First")
        make_project(name="Second")
        make_project(name="Third")
    return {"pid": str(first.id), "unknown": "0" * 24}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    SAME_ANSWERS,
    ids=[f"{m} {p}" for m, p, *_ in SAME_ANSWERS],
)
def test_both_paths_answer_the_same(client, shop, method, path, body, headers):
    path = path.format(**shop)
    answers = []
    for sent in (path, _twin(path)):  # the unversioned first: the v1 read may be cached
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        response = client.open(sent, method=method, headers=headers, **kwargs)
        answers.append(
            (
                response.status_code,
                response.get_json(silent=True),
                {name: response.headers.get(name) for name in COMPARED_HEADERS},
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][0] != 500


def test_an_etag_from_one_path_is_valid_on_the_other(client, shop):
    item = f"/api/projects/{shop['pid']}"
    etag = client.get(_twin(item)).headers["ETag"]
    assert client.get(item, headers={"If-None-Match": etag}).status_code == 304
    stale = client.get(item).headers["ETag"]
    assert client.patch(_twin(item), json={"owner": "ops"}).status_code == 200
    assert client.patch(item, json={"owner": "x"}, headers={"If-Match": stale}).status_code == 412
    fresh = client.get(_twin(item)).headers["ETag"]
    assert client.get(item, headers={"If-None-Match": fresh}).status_code == 304


def test_a_read_through_one_path_is_a_cache_hit_on_the_other(client, shop, monkeypatch):
    calls = []
    real = projects_service.list_projects

    def counted(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(projects_service, "list_projects", counted)
    first = client.get(_twin("/api/projects?sort=name"))
    second = client.get("/api/projects?sort=name")
    assert len(calls) == 1  # the second answer came from the response cache
    assert second.get_data() == first.get_data()
    assert second.headers["X-Pagination"] == first.headers["X-Pagination"]


@pytest.mark.parametrize(("write", "read"), [("/api/v1", "/api"), ("/api", "/api/v1")])
def test_a_write_through_one_path_is_read_at_once_through_the_other(client, shop, write, read):
    assert len(client.get(f"{read}/projects").json) == 3  # cached now
    created = client.post(f"{write}/projects", json={"name": "Fourth"})
    assert created.status_code == 201
    assert "Fourth" in [p["name"] for p in client.get(f"{read}/projects").json]
    item = f"/projects/{created.json['id']}"
    assert client.get(f"{read}{item}").json["owner"] is None  # cached now
    client.patch(f"{write}{item}", json={"owner": "ops"})
    assert client.get(f"{read}{item}").json["owner"] == "ops"
    assert client.delete(f"{write}{item}").status_code == 204
    assert client.get(f"{read}{item}").status_code == 404


# --- rate limits, request guards, headers ------------------------------------------------


@pytest.fixture
def make_limited(mongodb_uri, redis_url):
    def factory(**settings):
        return limited_app(mongodb_uri, redis_url, **settings)

    yield factory
    close_db()


def test_both_paths_of_a_route_share_its_rate_limit(make_limited):
    app = make_limited(RATELIMIT_DEFAULT="3 per minute")
    viewer = client_as(app, "viewer")
    assert viewer.get("/api/projects").status_code == 200
    assert viewer.get("/api/v1/projects").status_code == 200
    assert viewer.get("/api/projects/").status_code == 200
    refused = viewer.get("/api/v1/projects")
    assert refused.status_code == 429
    assert viewer.get("/api/services").status_code == 200  # another route, its own budget


def test_login_attempts_on_both_paths_share_the_login_limit(make_limited):
    app = make_limited(RATELIMIT_LOGIN="2 per minute")
    client = app.test_client()
    body = {"username": "nobody", "password": "wrong password"}
    assert client.post("/api/auth/login", json=body).status_code == 401
    assert client.post("/api/v1/auth/login", json=body).status_code == 401
    assert client.post("/api/auth/login", json=body).status_code == 429
    assert client.post("/api/v1/auth/login", json=body).status_code == 429


@pytest.mark.parametrize("prefix", ["/api", "/api/v1"])
def test_the_login_takes_form_fields_under_both_paths(app, prefix):
    from polymicro.auth import service as auth

    with app.app_context():
        auth.register_user(
            {"username": "alice", "email": "a@example.com", "password": "correct horse"},
            by_admin=True,
        )
    form = {"username": "alice", "password": "correct horse"}
    response = app.test_client().post(f"{prefix}/auth/login", data=form)
    assert response.status_code == 200, response.json
    assert response.json["access_token"]
    assert response.headers["Cache-Control"] == "no-store"
    other = client_as(app, "editor").post(f"{prefix}/projects", data={"name": "x"})
    assert other.status_code == 415  # form fields elsewhere: not JSON


# --- the OpenAPI document ------------------------------------------------------------------

ALIAS_MARKS = ("description", "tags", "x-alias-of")
METHODS = {"get", "put", "post", "patch", "delete"}


def _operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_the_document_shows_v1_as_canonical_and_the_old_paths_as_aliases(client):
    document = client.get("/openapi.json").json
    paths = document["paths"]
    v1 = {(p, m): op for p, m, op in _operations(document) if p.startswith(V1 + "/")}
    aliases = {(p, m): op for p, m, op in _operations(document) if not p.startswith(V1 + "/")}
    assert len(v1) == len(aliases) >= 40
    assert "/api/v1" in document["info"]["description"]
    for operation in v1.values():
        assert "x-alias-of" not in operation
        assert operation["tags"] != ["unversioned"]
    for (path, method), alias in aliases.items():
        canonical = alias["x-alias-of"]
        assert canonical == _twin(path)
        twin = paths[canonical][method]
        assert alias["tags"] == ["unversioned"]
        assert alias["description"].startswith(f"Alias of `{method.upper()} {canonical}`")
        assert alias["description"].endswith(twin.get("description", ""))
        assert not alias.get("deprecated", False)  # the dashboard's paths: not deprecated
        unmarked = {k: v for k, v in alias.items() if k not in ALIAS_MARKS}
        assert unmarked == {k: v for k, v in twin.items() if k not in ALIAS_MARKS}
        assert paths[path].get("parameters") == paths[canonical].get("parameters")
    tags = [tag["name"] for tag in document["tags"]]
    assert tags[-1] == "unversioned"
    assert "projects" in tags


# --- deprecation ---------------------------------------------------------------------------

legacy = Blueprint("legacy", __name__, url_prefix="/api/legacy", description="Test only.")
SINCE = date(2026, 1, 1)
SUNSET = datetime(2027, 7, 1, 12, 30, tzinfo=UTC)
EXPLAINED = "https://polymicro.example.com/docs/deprecations#legacy-old"


@legacy.route("/old")
class Old(MethodView):
    @deprecated(since=SINCE, sunset=SUNSET, link=EXPLAINED, successor="/api/v1/legacy/new")
    @access("viewer")
    @legacy.response(200)
    def get(self):
        """An old way."""
        return {"old": True}


@legacy.route("/new")
class New(MethodView):
    @access("viewer")
    @legacy.response(200)
    def get(self):
        """The new way."""
        return {"new": True}


@pytest.fixture
def legacy_app(mongodb_uri, redis_url, monkeypatch):
    real = polymicro.api_blueprints
    monkeypatch.setattr(polymicro, "api_blueprints", lambda: [*real(), legacy])
    app = polymicro.create_app(make_config(mongodb_uri, redis_url))
    yield app
    close_db()


@pytest.mark.parametrize("prefix", ["/api", "/api/v1"])
def test_a_deprecated_operation_announces_it_in_every_answer(legacy_app, prefix):
    viewer = client_as(legacy_app, "viewer")
    for response in (
        viewer.get(f"{prefix}/legacy/old"),  # a success
        legacy_app.test_client().get(f"{prefix}/legacy/old"),  # a 401 from access()
    ):
        assert response.headers["Deprecation"] == "@1767225600"  # 2026-01-01T00:00:00Z
        assert response.headers["Sunset"] == "Thu, 01 Jul 2027 12:30:00 GMT"
        assert response.headers.getlist("Link") == [
            f'<{EXPLAINED}>; rel="deprecation"; type="text/html"',
            '</api/v1/legacy/new>; rel="successor-version"',
        ]
    assert viewer.get(f"{prefix}/legacy/old").json == {"old": True}
    current = viewer.get(f"{prefix}/legacy/new")
    assert current.status_code == 200
    for header in ("Deprecation", "Sunset", "Link"):
        assert header not in current.headers


def test_a_deprecated_operation_is_deprecated_in_the_document_under_both_paths(legacy_app):
    paths = legacy_app.test_client().get("/openapi.json").json["paths"]
    for path in ("/api/v1/legacy/old", "/api/legacy/old"):
        operation = paths[path]["get"]
        assert operation["deprecated"] is True
        assert operation["x-deprecation"] == {
            "since": "2026-01-01T00:00:00+00:00",
            "link": EXPLAINED,
            "sunset": "2027-07-01T12:30:00+00:00",
            "successor": "/api/v1/legacy/new",
        }
        assert operation["security"] == [{"bearerAuth": []}]  # access() still documents
    assert "deprecated" not in paths["/api/v1/legacy/new"]["get"]


def test_the_deprecation_headers_are_exposed_to_browsers(mongodb_uri, redis_url):
    app = polymicro.create_app(
        make_config(mongodb_uri, redis_url, CORS_ORIGINS="https://dash.example.com")
    )
    try:
        response = client_as(app, "viewer").get(
            "/api/v1/projects", headers={"Origin": "https://dash.example.com"}
        )
        exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Deprecation", "Sunset", "Link"} <= exposed
    finally:
        close_db()


def test_a_sunset_before_the_deprecation_is_refused():
    with pytest.raises(ValueError, match="sunset"):
        deprecated(since=date(2027, 1, 1), sunset=date(2026, 1, 1), link=EXPLAINED)


def test_a_deprecation_without_sunset_or_successor_sends_only_what_it_knows():
    notice = versioning.Deprecation(
        since=datetime(2026, 3, 1, tzinfo=UTC), link="/docs#deprecations"
    )
    assert notice.headers() == [
        ("Deprecation", "@1772323200"),
        ("Link", '</docs#deprecations>; rel="deprecation"; type="text/html"'),
    ]
    assert json.dumps(notice.apidoc())  # plain data for the document
