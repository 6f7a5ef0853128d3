"""The cache's MGET on a connection of the thread's own (polymicro/common/cache_reads.py):
the same answers as flask-caching's ``get_many``, no pool checkout per read, a
connection per thread and per pool, the client's path with tracing on, and a Redis that
restarts is read again without the cache being counted down."""

from __future__ import annotations

import threading

import pytest

from polymicro import create_app
from polymicro.common import cache_reads, caching
from polymicro.extensions import cache, close_db
from polymicro.observability import tracing
from tests.conftest import free_port, make_config
from tests.test_caching_service import _start_redis, _stop


@pytest.fixture
def redis_app():
    """An app on a private redis-server (started here, stopped after), every read a
    round trip (the process's mirror of the keys, off here, is tested in
    tests/test_cache_mirror.py)."""
    port = free_port()
    state = {"proc": _start_redis(port), "port": port}
    app = create_app(make_config(None, f"redis://127.0.0.1:{port}/0", CACHE_MIRROR=False))
    caching.reset_state()
    yield app, state
    if state["proc"].poll() is None:
        _stop(state["proc"])
    close_db()


class CountingCheckouts:
    """Counts the connections taken from a pool (what the thread's own one avoids)."""

    def __init__(self, pool, monkeypatch):
        self.count = 0
        original = pool.get_connection

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counted)


VALUES = {
    "tuple": (3, 1234.5, (b'{"a": 1}', None, '{"total": 1}', None), 2.0),
    "int": 7,
    "text": "é",
    "dict": {"k": [1, 2]},
}


def test_the_answers_are_those_of_flask_caching(redis_app):
    app, _state = redis_app
    with app.app_context():
        for key, value in VALUES.items():
            cache.set(key, value)
        keys = [*VALUES, "missing", "int"]
        assert cache_reads.get_many(*keys) == cache.get_many(*keys)
        assert cache_reads.get_many(*keys) == [*VALUES.values(), None, 7]


def test_replies_are_parsed_by_hiredis(redis_app):
    """pyproject asks for redis[hiredis]: the C parser, 14-25% less CPU per MGET."""
    from redis._parsers import _HiredisParser

    app, _state = redis_app
    with app.app_context():
        cache.set("k", b"x" * 100_000)
        assert cache_reads.get_many("k") == [b"x" * 100_000]
        assert isinstance(cache_reads._local.held[2]._parser, _HiredisParser)


def test_a_thread_reads_on_one_connection_of_its_own(redis_app, monkeypatch):
    app, _state = redis_app
    with app.app_context():
        cache.set("k", "v")
        pool = cache.cache._read_client.connection_pool
        checkouts = CountingCheckouts(pool, monkeypatch)
        assert [cache_reads.get_many("k") for _ in range(5)] == [["v"]] * 5
        assert checkouts.count == 0
        mine = cache_reads._local.held[2]

        theirs = []

        def other_thread():
            with app.app_context():
                assert cache_reads.get_many("k") == ["v"]
                theirs.append(cache_reads._local.held[2])

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(theirs) == 1
        assert theirs[0] is not mine
        assert cache_reads._local.held[2] is mine


def test_another_app_gets_another_connection(redis_app):
    app, state = redis_app
    with app.app_context():
        cache.set("k", "first")
        assert cache_reads.get_many("k") == ["first"]
        first = cache_reads._local.held[2]
    second_app = create_app(make_config(None, f"redis://127.0.0.1:{state['port']}/1"))
    with second_app.app_context():
        assert cache_reads.get_many("k") == [None]  # database 1: its own keys
        assert cache_reads._local.held[0] is cache.cache._read_client.connection_pool
        assert cache_reads._local.held[2] is not first
    assert first._sock is None  # closed: that pool's connection is not used again


def test_with_tracing_on_the_read_goes_through_the_client(redis_app, monkeypatch):
    app, _state = redis_app
    with app.app_context():
        cache.set("k", "v")
        checkouts = CountingCheckouts(cache.cache._read_client.connection_pool, monkeypatch)
        monkeypatch.setattr(tracing, "_on", True)
        assert cache_reads.get_many("k") == ["v"]
        assert checkouts.count == 1  # the client's path, where the instrumentation is


def test_a_restarted_redis_is_read_again_without_counting_the_cache_down(redis_app):
    app, state = redis_app
    with app.app_context():
        cache.set("k", "before")
        assert caching._guard(cache_reads.get_many, "k") == ["before"]
        _stop(state["proc"])
        state["proc"] = _start_redis(state["port"])  # empty: nothing saved
        # The thread's connection is broken: the read goes through the client, which
        # reconnects; the answer is the restarted server's, and the cache is not down.
        assert caching._guard(cache_reads.get_many, "k") == [None]
        assert caching._breaker.down_until == 0.0
        cache.set("k", "after")
        assert caching._guard(cache_reads.get_many, "k") == ["after"]


ECHO_LUA = "redis.call('SET', KEYS[1], ARGV[1]) return {KEYS[1], ARGV[1], ARGV[2]}"


def _echo(app):
    prefix = cache.cache._get_prefix()
    script = caching._script(cache.cache._write_client, ECHO_LUA)
    return script, [prefix + "s"], ["value", 3]


def test_a_script_runs_on_the_threads_connection_with_the_clients_answer(redis_app, monkeypatch):
    app, _state = redis_app
    with app.app_context():
        script, keys, args = _echo(app)
        expected = script(keys=keys, args=args)  # the client's path (loads the script)
        checkouts = CountingCheckouts(cache.cache._write_client.connection_pool, monkeypatch)
        assert [cache_reads.run_script(script, keys, args) for _ in range(3)] == [expected] * 3
        assert checkouts.count == 0
        assert cache.cache._write_client.get(keys[0]) == b"value"


def test_a_flushed_script_is_loaded_again(redis_app):
    app, _state = redis_app
    with app.app_context():
        script, keys, args = _echo(app)
        cache.cache._write_client.script_flush()
        assert cache_reads.run_script(script, keys, args) == [keys[0].encode(), b"value", b"3"]
        # …and the thread's connection is still usable afterwards.
        assert cache_reads.run_script(script, keys, ["other", 4])[1] == b"other"


def test_a_bump_after_redis_restarted_reaches_the_new_server(redis_app):
    app, state = redis_app
    with app.app_context():
        caching.bump("catalog")
        _stop(state["proc"])
        state["proc"] = _start_redis(state["port"])  # empty: no generation, no script
        caching.bump("catalog")
        assert caching._breaker.down_until == 0.0
        assert cache.get(caching._generation_key("catalog")) is not None


def test_with_tracing_on_the_script_goes_through_the_client(redis_app, monkeypatch):
    app, _state = redis_app
    with app.app_context():
        script, keys, args = _echo(app)
        checkouts = CountingCheckouts(cache.cache._write_client.connection_pool, monkeypatch)
        monkeypatch.setattr(tracing, "_on", True)
        cache_reads.run_script(script, keys, args)
        assert checkouts.count >= 1


def test_the_ingest_budget_is_charged_on_the_threads_limiter_connection(monkeypatch):
    from bson import ObjectId

    from polymicro.security.limits import IngestRateLimited, charge_ingest, limiter

    port = free_port()
    proc = _start_redis(port)
    try:
        app = create_app(
            make_config(
                None,
                f"redis://127.0.0.1:{port}/0",
                RATELIMIT_ENABLED=True,
                INGEST_RATE_PER_SECOND=10,
                INGEST_BURST=10,
            )
        )
        storage = limiter.storage
        assert isinstance(storage.lua_acquire_sliding_window, cache_reads.ThreadScript)
        project = ObjectId()
        with app.test_request_context():
            charge_ingest(project, 1)  # NOSCRIPT: redis-py's Script loads it (the pool)
            checkouts = CountingCheckouts(storage.storage.connection_pool, monkeypatch)
            for _ in range(9):
                charge_ingest(project, 1)
            assert checkouts.count == 0  # every charge on the thread's own connection
            with pytest.raises(IngestRateLimited):
                charge_ingest(project, 1)  # the budget is really counted in Redis
        assert cache_reads._local.limits[0] is storage.storage.connection_pool
    finally:
        _stop(proc)
        close_db()
