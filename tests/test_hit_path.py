"""The cached-read hit path stays cheap without changing what a client sees (issue 9,
item 5): a request without cookies opens no signed session, a session that is used
still works as Flask's, and a response served from the response cache carries the same
headers as the one that filled it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import session

from polymicro import CookieSessions, PolymicroFlask, create_app
from polymicro.common import cache_reads, caching, clock
from polymicro.extensions import cache
from tests.conftest import client_as, make_config
from tests.factories import make_logs, make_metric, make_project, make_service


class CountingSessions(CookieSessions):
    """Counts the signing serializers built (the cost a session-less request avoids)."""

    built = 0

    def get_signing_serializer(self, app):
        CountingSessions.built += 1
        return super().get_signing_serializer(app)


def _app_with_session_views(mongodb_uri, redis_url):
    app = create_app(make_config(mongodb_uri, redis_url, AUTH_ENABLED=True))
    app.session_interface = CountingSessions()
    CountingSessions.built = 0

    @app.get("/test-session/set")
    def set_value():
        session["seen"] = "yes"
        return {"ok": True}

    @app.get("/test-session/get")
    def get_value():
        return {"seen": session.get("seen")}

    return app


def test_the_app_uses_the_cookie_sessions():
    app = create_app(make_config())
    assert type(app.session_interface) is CookieSessions


def test_a_request_without_cookies_builds_no_session_serializer(mongodb_uri, redis_url):
    app = _app_with_session_views(mongodb_uri, redis_url)
    client = app.test_client()
    for _ in range(3):
        response = client.get("/api/health/live")
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
        assert "Cookie" not in response.headers.get("Vary", "")
    assert CountingSessions.built == 0


def test_a_session_that_is_used_still_works(mongodb_uri, redis_url):
    app = _app_with_session_views(mongodb_uri, redis_url)
    client = app.test_client()
    assert client.get("/test-session/get").json == {"seen": None}
    assert "Cookie" in client.get("/test-session/get").headers["Vary"]  # accessed: Vary
    response = client.get("/test-session/set")
    assert "session=" in response.headers["Set-Cookie"]
    assert client.get("/test-session/get").json == {"seen": "yes"}  # the cookie is sent back
    assert CountingSessions.built > 0


def _headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k != "X-Request-ID"}


def test_a_cached_hit_has_the_headers_of_the_miss_that_filled_it(client, ctx):
    make_project(name="Shop")
    for path, gzip in [("/api/projects", False), ("/api/projects", True)]:
        headers = {"Accept-Encoding": "gzip"} if gzip else {}
        miss = client.get(path, headers=headers)
        hit = client.get(path, headers=headers)
        assert miss.status_code == hit.status_code == 200
        assert _headers(hit) == _headers(miss)
        assert hit.get_data() == miss.get_data()
        assert hit.headers["Vary"] == "Accept-Encoding"
        assert hit.headers["Content-Type"] == "application/json"
        assert "X-Pagination" in hit.headers


def test_a_large_cached_hit_is_served_gzipped_with_its_headers(client, ctx, app):
    app.config["COMPRESS_MIN_SIZE"] = 10  # the project list below is bigger than that
    make_project(name="Shop", description="x" * 200)
    miss = client.get("/api/projects", headers={"Accept-Encoding": "gzip"})
    hit = client.get("/api/projects", headers={"Accept-Encoding": "gzip"})
    assert miss.headers["Content-Encoding"] == hit.headers["Content-Encoding"] == "gzip"
    assert _headers(hit) == _headers(miss)
    assert hit.get_data() == miss.get_data()


# --- one round trip per hit -------------------------------------------------------------


def _count_lookups(monkeypatch) -> list[int]:
    """Counts the cache's multi-key reads (one round trip each on Redis) and single gets."""
    counts = [0, 0]
    get_many, get = cache.get_many, cache.get
    read_many = cache_reads.get_many  # the lookups' MGET (cache.get_many without Redis)
    inside = []

    def counted_get_many(*keys):
        if not inside:
            counts[0] += 1
        return get_many(*keys)

    def counted_read_many(*keys):
        counts[0] += 1
        inside.append(True)
        try:
            return read_many(*keys)
        finally:
            inside.pop()

    def counted_get(key):
        counts[1] += 1
        return get(key)

    monkeypatch.setattr(cache, "get_many", counted_get_many)
    monkeypatch.setattr(cache_reads, "get_many", counted_read_many)
    monkeypatch.setattr(cache, "get", counted_get)
    return counts


@pytest.fixture
def shop(app, ctx):
    """Retention on (the logs and CPU lists' keys depend on the project's days kept),
    a project with an override, a service, a log and a CPU entry."""
    app.config.update(RETENTION_LOGS_DAYS=7, RETENTION_POINTS_DAYS=5)
    project = make_project(name="Shop", retention={"logs_days": 3})
    svc = make_service(project, name="api")
    make_logs(svc, [{"message": "recent", "timestamp": clock.now() - timedelta(hours=1)}])
    make_metric(svc, points=[{"load": 1.0}])
    return project


def test_every_cached_read_is_one_lookup_when_it_hits(client, shop, monkeypatch):
    # The cache's clock stands still: a current entry of a list with a staleness window
    # is re-stamped (one more cache call, Reader._confirm) once an eighth of the window
    # has passed since it was known exact, which a loaded machine takes between the
    # warm-up and the counted read (seen as [1, 1] for the CPU metrics).
    now = caching.clock()
    monkeypatch.setattr(caching, "clock", lambda: now)
    pid = shop.id
    paths = [
        "/api/projects",
        f"/api/projects/{pid}",
        f"/api/services/project/{pid}",
        f"/api/metrics/cpu/project/{pid}",
        f"/api/logs/project/{pid}",
        f"/api/logs?project_id={pid}&severity=error",
    ]
    for path in paths:
        for _ in range(2):  # fills the entry, then learns the salt of a hit
            assert client.get(path).status_code == 200, path
    counts = _count_lookups(monkeypatch)
    for path in paths:
        before = list(counts)
        assert client.get(path).status_code == 200
        assert [counts[0] - before[0], counts[1] - before[1]] == [1, 0], path


def test_a_changed_salt_is_looked_up_again_and_served_right(app, client, shop, monkeypatch):
    editor = client_as(app, "editor")
    path = f"/api/logs/project/{shop.id}"
    old = {"message": "old", "timestamp": clock.now() - timedelta(days=2)}
    make_logs(make_service(shop, name="web"), [old])
    for _ in range(2):
        assert [row["message"] for row in editor.get(path).json] == ["recent", "old"]
    response = editor.patch(f"/api/projects/{shop.id}", json={"retention": {"logs_days": 1}})
    assert response.status_code == 200, response.json
    counts = _count_lookups(monkeypatch)
    assert [row["message"] for row in editor.get(path).json] == ["recent"]
    assert counts[0] >= 2  # the guess (the days kept before), then the right key
    before = counts[0]
    assert [row["message"] for row in editor.get(path).json] == ["recent"]
    assert counts[0] - before == 1  # learned again: one lookup


# --- Flask's ensure_sync, remembered per function --------------------------------------


def test_ensure_sync_asks_once_per_function_and_answers_as_flask(monkeypatch):
    import polymicro

    app = create_app(make_config())
    assert isinstance(app, PolymicroFlask)
    asked = []
    real = polymicro.iscoroutinefunction
    monkeypatch.setattr(polymicro, "iscoroutinefunction", lambda f: asked.append(f) or real(f))
    client = app.test_client()
    assert client.get("/api/health/live").status_code == 200
    first = len(asked)
    assert first > 0
    for _ in range(3):
        assert client.get("/api/health/live").status_code == 200
    assert len(asked) == first  # each hook and view asked about once, not per request

    class View:
        def sync(self):
            return "sync"

        async def coro(self):
            return "async"

    # A bound method is remembered by its function (a method view's instance is new
    # each request); a coroutine function is handed to async_to_sync as in Flask.
    one, two = View(), View()
    assert app.ensure_sync(one.sync) == one.sync
    assert app.ensure_sync(two.sync) == two.sync
    wrapped = []
    monkeypatch.setattr(app, "async_to_sync", lambda f: wrapped.append(f) or "wrapped")
    assert app.ensure_sync(one.coro) == "wrapped"
    assert app.ensure_sync(one.coro) == "wrapped"  # never remembered as plain
    assert wrapped == [one.coro, one.coro]


# --- the response key, remembered ------------------------------------------------------


def test_the_remembered_response_key_is_make_keys():
    from polymicro.common import caching
    from polymicro.common.blueprint import ENTRY_FORMAT, _response_key

    query = [("project_id", "abc"), ("severity", "error")]
    for salt in (None, 30, "x", [30, []], 1.0, True):
        for _ in range(2):  # computed, then remembered
            assert _response_key("/api/logs", query, salt) == caching.make_key(
                "response", ENTRY_FORMAT, "/api/logs", query, salt
            )
    # 1, 1.0 and True are equal in Python and dump differently: three keys.
    keys = {_response_key("/api/logs", query, salt) for salt in (1, 1.0, True)}
    assert len(keys) == 3
    assert _response_key("/api/logs", [], None) != _response_key("/api/logs", query, None)
