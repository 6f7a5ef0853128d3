"""A worker's mirror of the cache keys it read (polymicro/common/cache_mirror.py), on a
private redis-server: a hit without a round trip, and every way a kept key must stop
being used (a write by another connection, its TTL, a flush, a lost invalidation
connection, a read overtaken by a write), through the service layer and the API."""

from __future__ import annotations

import pytest
import redis

from polymicro import create_app
from polymicro.common import cache_mirror, cache_reads, caching
from polymicro.extensions import cache, close_db
from tests.conftest import client_as, free_port, make_config
from tests.test_caching_service import _start_redis, _stop


@pytest.fixture
def server():
    port = free_port()
    proc = _start_redis(port)
    yield port
    if proc.poll() is None:
        _stop(proc)


def _app(port: int, **overrides):
    app = create_app(make_config(None, f"redis://127.0.0.1:{port}/0", **overrides))
    caching.reset_state()
    return app


@pytest.fixture
def mirrored(server):
    """(app, another connection to its Redis: another worker's writes, the counters)."""
    app = _app(server)
    other = redis.Redis(port=server)
    yield app, other
    other.close()
    close_db()


def _mgets(other) -> int:
    return other.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)


class Clock:
    def __init__(self, monkeypatch):
        self.now = 1000.0
        monkeypatch.setattr(cache_mirror, "monotonic", lambda: self.now)


def test_a_read_of_kept_keys_makes_no_round_trip(mirrored):
    app, other = mirrored
    with app.test_request_context():
        cache.set("k", {"v": 1})
        assert cache_reads.get_many("k", "missing") == [{"v": 1}, None]
        before = _mgets(other)
        for _ in range(5):
            assert cache_reads.get_many("k", "missing") == [{"v": 1}, None]
        assert _mgets(other) == before


def test_a_write_acknowledged_to_another_connection_is_seen_by_the_next_read(mirrored):
    """The promise: Redis sends the invalidation before the write's reply."""
    app, other = mirrored
    with app.test_request_context():
        cache.set("k", 0)
        assert cache_reads.get_many("k") == [0]
        prefix = cache.cache._get_prefix()
        for value in range(1, 301):
            other.set(f"{prefix}k", value)  # cachelib stores ints as plain digits
            assert cache_reads.get_many("k") == [value]
        other.delete(f"{prefix}k")
        assert cache_reads.get_many("k") == [None]


def test_a_bump_by_another_worker_is_seen_by_the_next_read(mirrored):
    app, other = mirrored
    with app.test_request_context():
        key = caching._generation_key("catalog")
        first = caching._generation("catalog")
        assert cache_reads.get_many(key) == [first]
        other.incr(f"{cache.cache._get_prefix()}{key}")
        assert cache_reads.get_many(key) == [first + 1]


def test_a_key_is_read_again_once_its_ttl_has_run_out(mirrored, monkeypatch):
    app, other = mirrored
    clock = Clock(monkeypatch)
    with app.test_request_context():
        cache.set("short", "x", timeout=2)
        cache.set("long", "y", timeout=60)
        cache_reads.get_many("short")
        cache_reads.get_many("long")
        before = _mgets(other)
        clock.now += 1.9
        cache_reads.get_many("short")
        cache_reads.get_many("long")
        assert _mgets(other) == before
        clock.now += 0.2  # past the 2 s of "short"
        cache_reads.get_many("short")
        assert _mgets(other) == before + 1
        cache_reads.get_many("long")
        assert _mgets(other) == before + 1
        clock.now += cache_mirror.MAX_AGE_S  # nothing is kept longer, whatever its TTL
        cache_reads.get_many("long")
        assert _mgets(other) == before + 2


def test_a_flush_drops_everything_kept(mirrored):
    app, other = mirrored
    with app.test_request_context():
        cache.set("k", "v")
        assert cache_reads.get_many("k") == ["v"]
        other.flushdb()
        assert cache_reads.get_many("k") == [None]


def test_a_lost_invalidation_connection_drops_everything_kept(mirrored):
    """Writes made while it was gone are seen: nothing kept before is used again."""
    app, other = mirrored
    with app.test_request_context():
        cache.set("k", "before")
        assert cache_reads.get_many("k") == ["before"]
        assert other.client_kill_filter(_type="pubsub") == 1
        cache.set("k", "after")  # its invalidation has nowhere to go
        assert cache_reads.get_many("k") == ["after"]
        # a new invalidation connection is opened on the next read, and used
        assert cache_reads.get_many("k") == ["after"]
        assert cache_mirror._current is not None
        assert cache_mirror._current.alive
        before = _mgets(other)
        assert cache_reads.get_many("k") == ["after"]
        assert _mgets(other) == before
        other.set(f"{cache.cache._get_prefix()}k", 5)
        assert cache_reads.get_many("k") == [5]


def test_a_read_overtaken_by_a_write_keeps_nothing_of_that_key(mirrored):
    app, other = mirrored
    with app.test_request_context():
        prefix = cache.cache._get_prefix()
        cache.set("a", 1)
        cache.set("b", 2)
        mirror = cache_mirror.for_pool(cache.cache._read_client.connection_pool)
        keys = [f"{prefix}a", f"{prefix}b"]
        kept, seq = mirror.lookup(keys)
        assert kept is None
        values = other.mget(keys)
        other.set(f"{prefix}a", 10)  # lands after the read, before the read is kept
        mirror.keep(keys, values, [-1, -1], seq)
        assert f"{prefix}a" not in mirror.values
        assert mirror.values[f"{prefix}b"][0] == b"2"
        assert cache_reads.get_many("a", "b") == [10, 2]


def test_the_number_of_kept_keys_is_bounded(mirrored, monkeypatch):
    app, _other = mirrored
    monkeypatch.setattr(cache_mirror, "MAX_KEYS", 3)
    with app.test_request_context():
        for index in range(10):
            cache_reads.get_many(f"k{index}")
            assert len(cache_mirror._current.values) <= 3


def test_with_the_setting_off_every_read_is_a_round_trip(server):
    app = _app(server, CACHE_MIRROR=False)
    other = redis.Redis(port=server)
    with app.test_request_context():
        cache.set("k", "v")
        before = _mgets(other)
        for _ in range(3):
            assert cache_reads.get_many("k") == ["v"]
        assert _mgets(other) == before + 3
        assert cache_mirror.for_pool(cache.cache._read_client.connection_pool) is None
    other.close()
    close_db()


def test_a_redis_without_client_tracking_is_read_as_before():
    port = free_port()
    proc = _start_redis(port, "--rename-command", "CLIENT", "")
    try:
        other = redis.Redis(port=port)
        app = _app(port)
        with app.test_request_context():
            cache.set("k", "v")
            before = _mgets(other)
            assert cache_reads.get_many("k") == ["v"]
            assert cache_reads.get_many("k") == ["v"]
            assert _mgets(other) == before + 2
            assert cache_mirror.for_pool(cache.cache._read_client.connection_pool) is None
        other.close()
    finally:
        _stop(proc)
        close_db()


def test_through_the_api_a_cached_list_hit_makes_no_round_trip_and_writes_show(mirrored):
    """A dashboard's second read of a project's logs is answered by the worker alone;
    a log POSTed by the same caller is in its next read (read-your-writes), and a
    project deleted by another worker's write is gone for everyone."""
    app, other = mirrored
    admin = client_as(app, "admin")
    project = admin.post("/api/projects", json={"name": "mirror"}).json
    svc = admin.post("/api/services", json={"name": "api", "project_id": project["id"]}).json
    log = {
        "project_id": project["id"],
        "service_id": svc["id"],
        "severity": "info",
        "message": "first",
    }
    assert admin.post("/api/logs", json=log).status_code == 201
    url = f"/api/logs/project/{project['id']}"
    assert [row["message"] for row in admin.get(url).json] == ["first"]  # stored
    assert [row["message"] for row in admin.get(url).json] == ["first"]  # read, kept
    before = _mgets(other)
    for _ in range(3):
        assert [row["message"] for row in admin.get(url).json] == ["first"]
    assert _mgets(other) == before
    assert admin.post("/api/logs", json={**log, "message": "second"}).status_code == 201
    assert sorted(row["message"] for row in admin.get(url).json) == ["first", "second"]
    # another worker bumps the catalog (as its delete of a project would)
    projects_before = admin.get("/api/projects").json
    with app.test_request_context():
        key = f"{cache.cache._get_prefix()}{caching._generation_key('catalog')}"
    other.incr(key)
    before = _mgets(other)
    assert admin.get("/api/projects").json == projects_before
    assert _mgets(other) > before  # the bump made the kept generation stale


def test_outside_a_request_no_mirror_is_opened(mirrored):
    """The background worker and the CLI read through: they would drain their
    invalidations only now and then."""
    app, other = mirrored
    with app.app_context():
        cache.set("k", "v")
        before = _mgets(other)
        assert cache_reads.get_many("k") == ["v"]
        assert cache_reads.get_many("k") == ["v"]
        assert _mgets(other) == before + 2
        assert other.client_list(_type="pubsub") == []
