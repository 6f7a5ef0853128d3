"""The process-local copy of API keys and project/service references
(polymicro.common.local_cache): one round trip per request for all of them, and a
write anywhere (any worker: only the generation in the shared cache tells) is seen by
the next request, with no time bound at all."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import pytest

from polymicro.auth import service as auth
from polymicro.auth.models import ApiKey
from polymicro.common import cache_reads, caching, local_cache, retention
from polymicro.extensions import cache
from polymicro.logs import service as logs
from polymicro.logs.models import LogEntry
from polymicro.projects import service as projects
from polymicro.projects.models import Project
from polymicro.services import service as services
from polymicro.services.models import Service
from tests.factories import make_logs, make_service


@pytest.fixture(autouse=True)
def _fresh():
    local_cache.clear()
    yield
    local_cache.clear()


@pytest.fixture
def svc(ctx):
    return make_service(name="api")


@pytest.fixture
def key(app, svc):
    raw = auth.create_api_key(svc.project_id, "writer", None)["key"]
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = raw
    return client


def body(svc) -> dict:
    return {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "severity": "info",
        "message": "hello",
    }


class Counting:
    """Counts the calls of a function (patched onto an object)."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


def _another_worker_bumps(namespace: str) -> None:
    """What a write in another worker does to the shared cache: the generation moves.
    (Not ``caching.bump``: a bump made in this process is also told to local_cache.)"""
    caching._increment([namespace], {}, 0)


class Clock:
    """caching.clock, moved by hand."""

    def __init__(self, monkeypatch):
        self.now = 1_000_000.0
        monkeypatch.setattr(caching, "clock", lambda: self.now)

    def advance(self, ms: float) -> None:
        self.now += ms / 1000.0


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


BOUND_MS = 500  # REFERENCE_RECHECK_MS's default


# --- through the HTTP API, auth on --------------------------------------------------------


def test_warm_posts_read_the_key_project_and_service_once_per_window(
    app, key, svc, clock, monkeypatch
):
    assert app.config["REFERENCE_RECHECK_MS"] == BOUND_MS
    assert key.post("/api/logs", json=body(svc)).status_code == 201  # warms the memo
    reads = Counting(monkeypatch, cache, "get_many")
    queries = Counting(monkeypatch, services, "_service_ref")
    key_rows = Counting(monkeypatch, auth, "_key_row")
    project_rows = Counting(monkeypatch, projects, "_project_ref")
    for _ in range(3):
        assert key.post("/api/logs", json=body(svc)).status_code == 201
    assert reads.calls == 0  # no round trip for them inside the window (was three each)
    clock.advance(BOUND_MS)
    for _ in range(3):
        assert key.post("/api/logs", json=body(svc)).status_code == 201
    assert reads.calls == 1  # one MGET of both generations, then trusted again
    assert (queries.calls, key_rows.calls, project_rows.calls) == (0, 0, 0)
    assert LogEntry.objects.count() == 7


def test_exact_setting_reads_the_generations_once_per_request(app, key, svc, monkeypatch):
    app.config["REFERENCE_RECHECK_MS"] = 0
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    reads = Counting(monkeypatch, cache, "get_many")
    key_rows = Counting(monkeypatch, auth, "_key_row")
    for _ in range(3):
        assert key.post("/api/logs", json=body(svc)).status_code == 201
    assert (reads.calls, key_rows.calls) == (3, 0)


def test_a_key_revoked_by_another_worker_is_refused_once_the_bound_has_passed(app, key, svc, clock):
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    ApiKey.objects.update(revoked_at=datetime(2026, 11, 30))  # the other worker's write
    _another_worker_bumps(auth.KEYS.key())  # and its bump
    clock.advance(BOUND_MS - 1)
    assert key.post("/api/logs", json=body(svc)).status_code == 201  # inside the bound
    clock.advance(1)
    response = key.post("/api/logs", json=body(svc))
    assert response.status_code == 401
    assert LogEntry.objects.count() == 2


def test_with_the_exact_setting_another_workers_revocation_is_seen_at_once(app, key, svc):
    app.config["REFERENCE_RECHECK_MS"] = 0
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    ApiKey.objects.update(revoked_at=datetime(2026, 11, 30))
    assert key.post("/api/logs", json=body(svc)).status_code == 201  # not announced yet
    _another_worker_bumps(auth.KEYS.key())
    assert key.post("/api/logs", json=body(svc)).status_code == 401
    assert LogEntry.objects.count() == 2


def test_revoking_through_the_api_is_refused_at_once_in_this_worker(app, client, key, svc, clock):
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    (row,) = auth.list_api_keys(svc.project_id)
    url = f"/api/projects/{svc.project_id}/keys/{row['id']}"
    assert client.delete(url).status_code == 204
    assert key.post("/api/logs", json=body(svc)).status_code == 401  # no time passed
    assert LogEntry.objects.count() == 1


def test_a_service_deleted_by_another_worker_is_refused_once_the_bound_has_passed(
    app, key, svc, clock
):
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    Service.objects(id=svc.id).delete()
    _another_worker_bumps(services.CATALOG.key())
    clock.advance(BOUND_MS)
    response = key.post("/api/logs", json=body(svc))
    assert response.status_code == 422
    assert response.json["errors"]["json"]["service_id"] == ["No service with this id."]
    assert LogEntry.objects.count() == 1


@contextlib.contextmanager
def _bumped_after_each_read(*namespaces: str):
    """Each generation read of ``local_cache`` (a request's) is overtaken by a bump of
    ``namespaces`` in this worker before the answer is used."""
    real_read = local_cache._read

    def read_then_bump(names):
        found = real_read(names)
        caching.bump(*namespaces)
        return found

    local_cache._read = read_then_bump
    try:
        yield
    finally:
        local_cache._read = real_read


def test_a_read_overtaken_by_a_bump_of_this_worker_is_not_trusted(app, key, svc, clock):
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    local_cache._checked.clear()
    with _bumped_after_each_read(auth.KEYS.key()):  # a bump of this worker overtakes
        assert key.post("/api/logs", json=body(svc)).status_code == 201
    assert local_cache._checked == {}  # what it read is not trusted by later requests


def test_a_project_deleted_through_the_api_is_refused_at_once(app, client, svc):
    other = make_service(name="other")  # another project's key still works after
    raw = auth.create_api_key(other.project_id, "writer", None)["key"]
    writer = app.test_client()
    writer.environ_base["HTTP_X_API_KEY"] = raw
    assert writer.post("/api/logs", json=body(other)).status_code == 201
    assert client.delete(f"/api/projects/{other.project_id}").status_code == 204
    assert writer.post("/api/logs", json=body(other)).status_code == 401  # its keys died
    assert client.post("/api/logs", json=body(other)).status_code == 422  # and the project
    assert client.post("/api/logs", json=body(svc)).status_code == 201
    assert LogEntry.objects.count() == 1


def _aged_logs(svc) -> None:
    """Two logs of ``svc``, stamped now and three days ago (the real clock: the TTL
    index that a 7-day retention creates deletes by it)."""
    now = datetime.utcnow()
    make_logs(svc, [{"message": "age 0", "timestamp": now}])
    make_logs(svc, [{"message": "age 3", "timestamp": now - timedelta(days=3)}])


def _listed(client, svc) -> list[str]:
    response = client.get(f"/api/logs/project/{svc.project_id}")
    assert response.status_code == 200, response.json
    return [row["message"] for row in response.json]


def test_another_workers_retention_override_applies_once_the_bound_has_passed(
    app, client, svc, clock
):
    app.config["RETENTION_LOGS_DAYS"] = 7
    _aged_logs(svc)
    assert _listed(client, svc) == ["age 0", "age 3"]
    Project.objects(id=svc.project_id).update(set__retention={"logs_days": 1})  # its write
    _another_worker_bumps(projects.CATALOG.key())  # and its bump
    clock.advance(BOUND_MS - 1)
    assert _listed(client, svc) == ["age 0", "age 3"]  # inside the bound: the days known
    clock.advance(1)
    assert _listed(client, svc) == ["age 0"]  # the 1-day horizon
    assert LogEntry.objects.count() == 2  # hidden, not deleted (the sweep deletes)


def test_with_the_exact_setting_another_workers_override_applies_at_once(app, client, svc):
    app.config.update(RETENTION_LOGS_DAYS=7, REFERENCE_RECHECK_MS=0)
    _aged_logs(svc)
    assert _listed(client, svc) == ["age 0", "age 3"]
    Project.objects(id=svc.project_id).update(set__retention={"logs_days": 1})
    _another_worker_bumps(projects.CATALOG.key())
    assert _listed(client, svc) == ["age 0"]


def test_a_warm_log_list_hit_is_one_mget_without_the_overrides(app, client, svc, monkeypatch):
    app.config["RETENTION_LOGS_DAYS"] = 7
    _aged_logs(svc)
    for _ in range(3):  # fill the entry, then learn the key of a hit
        assert _listed(client, svc) == ["age 0", "age 3"]
    asked: list[tuple] = []
    real_get_many = cache_reads.get_many
    monkeypatch.setattr(
        cache_reads, "get_many", lambda *keys: asked.append(keys) or real_get_many(*keys)
    )
    overrides = Counting(monkeypatch, projects, "_overrides")
    assert _listed(client, svc) == ["age 0", "age 3"]
    (keys,) = asked  # one round trip
    # the namespace's generation, the entry, the caller's last write, the refresh lease:
    # no generation or entry of the catalog's retention overrides (kept in the process)
    assert len(keys) == 4
    assert not any(projects.CATALOG.key() in key for key in keys)
    assert overrides.calls == 0


# --- at the service layer ----------------------------------------------------------------


def test_the_local_answer_is_used_until_the_generation_moves(ctx, svc, clock):
    rows = []

    def producer():
        rows.append(1)
        return {"n": len(rows)}

    with ctx.test_request_context():
        assert local_cache.cached("catalog", ("k",), producer) == {"n": 1}
    with ctx.test_request_context():
        cache.delete(
            caching._entry_key("catalog", caching.make_key("k"))
        )  # not even Redis is asked
        assert local_cache.cached("catalog", ("k",), producer) == {"n": 1}
    _another_worker_bumps("catalog")
    with ctx.test_request_context():  # inside the bound: what was read is trusted
        assert local_cache.cached("catalog", ("k",), producer) == {"n": 1}
    clock.advance(BOUND_MS)
    with ctx.test_request_context():
        assert local_cache.cached("catalog", ("k",), producer) == {"n": 2}
    assert len(rows) == 2


def test_a_write_landing_during_the_computation_leaves_the_answer_stale(ctx):
    ctx.config["REFERENCE_RECHECK_MS"] = 0  # the generation read on every request
    calls = []

    def producer():
        calls.append(1)
        if len(calls) == 1:
            _another_worker_bumps("catalog")  # a write between the read and the store
        return len(calls)

    with ctx.test_request_context():
        assert local_cache.cached("catalog", ("race",), producer) == 1
    with ctx.test_request_context():
        assert local_cache.cached("catalog", ("race",), producer) == 2  # not current
    with ctx.test_request_context():
        assert local_cache.cached("catalog", ("race",), producer) == 2
    assert len(calls) == 2


def test_outside_a_request_the_generation_is_read_each_time(ctx, monkeypatch):
    assert local_cache.cached("catalog", ("out",), lambda: 7) == 7
    reads = Counting(monkeypatch, cache, "get_many")
    assert local_cache.cached("catalog", ("out",), lambda: 8) == 7
    assert reads.calls == 1
    _another_worker_bumps("catalog")
    assert local_cache.cached("catalog", ("out",), lambda: 9) == 9


def test_a_bump_in_the_same_request_is_seen_by_its_later_reads(ctx):
    with ctx.test_request_context():
        assert local_cache.cached("catalog", ("same",), lambda: 1) == 1
        caching.bump("catalog")
        assert local_cache.cached("catalog", ("same",), lambda: 2) == 2


def test_a_caller_changing_its_answer_does_not_change_the_kept_one(ctx):
    first = local_cache.cached("catalog", ("mutable",), lambda: {"name": "a"})
    first["name"] = "changed"
    assert local_cache.cached("catalog", ("mutable",), lambda: {"name": "b"}) == {"name": "a"}


def test_with_the_cache_down_nothing_is_kept_locally(ctx, monkeypatch):
    def down(*_args, **_kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get_many", down)
    caching.reset_state()
    try:
        assert local_cache.cached("catalog", ("down",), lambda: 1) == 1
        assert local_cache.cached("catalog", ("down",), lambda: 2) == 2  # the database's
    finally:
        caching.reset_state()
    monkeypatch.undo()
    assert local_cache.cached("catalog", ("down",), lambda: 3) in (2, 3)  # cached or fresh


def test_a_namespace_with_a_staleness_window_is_refused(ctx):
    with pytest.raises(ValueError, match="staleness window"):
        local_cache.cached("logs", ("k",), lambda: 1)


def test_the_number_of_kept_answers_is_bounded(ctx, monkeypatch):
    monkeypatch.setattr(local_cache, "MAX_ENTRIES", 3)
    for n in range(7):
        local_cache.cached("catalog", (f"many-{n}",), lambda n=n: n)
    assert len(local_cache._entries) <= 3


def test_a_read_overtaken_by_a_bump_of_another_namespace_is_kept(app, key, svc, clock):
    """Every log write bumps the logs namespaces: under concurrent POSTs that must not
    keep the generations of keys and catalog from being trusted."""
    assert key.post("/api/logs", json=body(svc)).status_code == 201
    local_cache._checked.clear()
    with _bumped_after_each_read(f"logs:{svc.project_id}", "logs"):  # another thread's write
        assert key.post("/api/logs", json=body(svc)).status_code == 201
    assert set(local_cache._checked) == {auth.KEYS.key(), services.CATALOG.key()}


def test_retention_overrides_follow_the_catalog_generation(ctx, svc, clock):
    with ctx.test_request_context():
        assert projects.retention_overrides() == {}
    Project.objects(id=svc.project_id).update(set__retention={"logs_days": 1})
    _another_worker_bumps(projects.CATALOG.key())
    with ctx.test_request_context():  # inside the bound: what was read is trusted
        assert projects.retention_overrides() == {}
    clock.advance(BOUND_MS)
    with ctx.test_request_context():
        assert projects.retention_overrides() == {svc.project_id: {"logs_days": 1}}


def test_a_retention_override_changed_in_this_worker_is_seen_at_once(ctx, svc, clock):
    with ctx.test_request_context():
        assert projects.retention_overrides() == {}
    with ctx.test_request_context():
        projects.update_project(svc.project_id, {"retention": {"logs_days": 1}})
    with ctx.test_request_context():  # no time passed
        assert projects.retention_overrides() == {svc.project_id: {"logs_days": 1}}


# --- derived values: the retention days of a list's key -------------------------------------


def test_a_warm_log_list_hit_works_out_no_retention_days(app, client, svc, monkeypatch):
    app.config["RETENTION_LOGS_DAYS"] = 7
    _aged_logs(svc)
    for _ in range(3):  # fill the entry, then learn the key of a hit
        assert _listed(client, svc) == ["age 0", "age 3"]
    worked_out = Counting(monkeypatch, retention, "_visible_key")
    assert _listed(client, svc) == ["age 0", "age 3"]
    assert worked_out.calls == 0  # remembered with the overrides they come from


def test_an_override_set_through_the_api_applies_to_the_next_list_at_once(app, client, svc):
    app.config["RETENTION_LOGS_DAYS"] = 7
    _aged_logs(svc)
    assert _listed(client, svc) == ["age 0", "age 3"]
    answer = client.put(f"/api/projects/{svc.project_id}", json={"retention": {"logs_days": 1}})
    assert answer.status_code == 200, answer.json
    assert _listed(client, svc) == ["age 0"]  # no time passed


def _days(ctx, svc) -> int:
    with ctx.test_request_context():
        return retention.visible_key(logs.RETENTION, svc.project_id)


def test_remembered_days_follow_a_bump_of_this_worker_at_once(app, ctx, svc, clock):
    app.config["RETENTION_LOGS_DAYS"] = 7
    assert _days(ctx, svc) == 7
    with ctx.test_request_context():
        projects.update_project(svc.project_id, {"retention": {"logs_days": 2}})
    assert _days(ctx, svc) == 2


def test_remembered_days_follow_another_workers_override_once_the_bound_has_passed(
    app, ctx, svc, clock
):
    app.config["RETENTION_LOGS_DAYS"] = 7
    assert _days(ctx, svc) == 7
    Project.objects(id=svc.project_id).update(set__retention={"logs_days": 2})
    _another_worker_bumps(projects.CATALOG.key())
    clock.advance(BOUND_MS - 1)
    assert _days(ctx, svc) == 7  # what the overrides read in this process still say
    clock.advance(1)
    assert _days(ctx, svc) == 2


def test_a_derived_value_is_not_kept_when_a_bump_lands_during_its_computation(ctx, clock):
    store: dict = {}
    namespace = projects.CATALOG.key()
    with ctx.test_request_context():
        projects.retention_overrides()  # this process now holds the catalog's generation
        computed = []

        def compute_meanwhile_bumped():
            computed.append(1)
            caching.bump(namespace)  # a write of this process, during the computation
            return "old"

        assert local_cache.derived(namespace, store, "k", compute_meanwhile_bumped) == "old"
    assert store == {}
    with ctx.test_request_context():
        projects.retention_overrides()
        assert local_cache.derived(namespace, store, "k", lambda: "new") == "new"
        assert local_cache.derived(namespace, store, "k", lambda: "other") == "new"  # kept


def test_outside_a_request_a_derived_value_is_computed_each_time(ctx):
    store: dict = {}
    namespace = projects.CATALOG.key()
    assert local_cache.derived(namespace, store, "k", lambda: 1) == 1
    assert local_cache.derived(namespace, store, "k", lambda: 2) == 2
    assert store == {}


def test_remembered_days_are_the_apps_own(app, ctx, svc, clock):
    from polymicro import create_app

    app.config["RETENTION_LOGS_DAYS"] = 7
    assert _days(ctx, svc) == 7
    other = create_app({**app.config, "RETENTION_LOGS_DAYS": 3})
    with other.test_request_context():
        projects.retention_overrides()
        assert retention.visible_key(logs.RETENTION, svc.project_id) == 3
    assert _days(ctx, svc) == 7
