"""The caching layer itself: generations, failure handling, recovery.

The outage test runs a real ``redis-server`` of its own on a free port, stops it and
starts it again, and checks that the API keeps answering from the database (no 5xx,
one warning) and that caching resumes once Redis is back.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time

import pytest

from polymicro import create_app
from polymicro.common import cache_reads, caching
from polymicro.extensions import cache, close_db
from tests.conftest import _empty_database, client_as, free_port, make_config

in_app = pytest.mark.usefixtures("ctx")


def counting(value):
    calls = []

    def producer():
        calls.append(1)
        return value

    return producer, calls


def _failing(*_args, **_kwargs):
    raise ConnectionError("down")


@in_app
def test_cached_calls_the_producer_once():
    producer, calls = counting({"a": 1})
    assert caching.cached("ns", "k", producer) == {"a": 1}
    assert caching.cached("ns", "k", producer) == {"a": 1}
    assert len(calls) == 1


@in_app
def test_bump_invalidates_only_its_namespace():
    producer, calls = counting([1])
    other, other_calls = counting([2])
    caching.cached("one", "k", producer)
    caching.cached("two", "k", other)
    caching.bump("one")
    caching.cached("one", "k", producer)
    caching.cached("two", "k", other)
    assert (len(calls), len(other_calls)) == (2, 1)


@in_app
def test_keys_differ_by_every_part():
    assert caching.make_key("p", q="a") != caching.make_key("p", q="b")
    assert caching.make_key("p", q="a") != caching.make_key("p", q="a", page=2)
    assert caching.make_key("p", None) != caching.make_key("p", "None", 1)
    assert caching.make_key("p", q="a", tag="b") == caching.make_key("p", tag="b", q="a")


@in_app
def test_a_lost_generation_key_never_revives_old_entries():
    producer, calls = counting("v")
    caching.cached("ns", "k", producer)
    cache.delete("gen:ns")  # as after an eviction
    caching.cached("ns", "k", producer)
    assert len(calls) == 2


@in_app
def test_a_bump_that_failed_is_replayed_before_the_cache_is_used_again(monkeypatch):
    producer, calls = counting("old")
    caching.cached("ns", "k", producer)
    real_increment = caching._increment
    monkeypatch.setattr(caching, "_increment", _failing)
    caching.bump("ns")  # fails: remembered as pending
    assert caching._breaker.pending == {"ns"}
    monkeypatch.setattr(caching, "_increment", real_increment)
    monkeypatch.setattr(caching, "RETRY_SECONDS", 0.0)
    caching._breaker.down_until = 0.0
    caching.cached("ns", "k", producer)
    assert len(calls) == 2  # the replayed bump made the old entry unreachable
    assert caching._breaker.pending == set()


@in_app
def test_a_failing_cache_falls_back_to_the_producer_and_warns_once(monkeypatch, caplog):
    for operation in ("get", "get_many", "set"):  # every call a read or a store makes
        monkeypatch.setattr(cache, operation, _failing)
    monkeypatch.setattr(cache_reads, "get_many", _failing)  # the lookups' MGET on Redis
    monkeypatch.setattr(caching, "RETRY_SECONDS", 0.0)
    producer, calls = counting(5)
    with caplog.at_level(logging.WARNING, logger="polymicro.common.caching"):
        results = [caching.cached("ns", "k", producer) for _ in range(5)]
    assert results == [5] * 5
    assert len(calls) == 5
    assert caplog.text.count("cache unavailable") == 1


# --- a real Redis that goes away and comes back ------------------------------------------


def _start_redis(port: int, *options: str) -> subprocess.Popen:
    """A private redis-server on ``port`` (with ``options`` added to its command line),
    once it accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("POLYMICRO_TEST_REDIS_URL"):
            pytest.fail("redis-server is needed for the outage test in the Redis run")
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", *options),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def own_redis_app(mongodb_uri, monkeypatch):
    """An app on a Redis of its own (the ``ctx`` app's connection is replaced)."""
    port = free_port()
    proc = _start_redis(port)
    config = make_config(mongodb_uri, f"redis://127.0.0.1:{port}/0")
    monkeypatch.setattr(caching, "RETRY_SECONDS", 0.1)
    app = create_app(config)
    caching.reset_state()
    state = {"proc": proc, "port": port}
    yield app, state
    if state["proc"].poll() is None:
        _stop(state["proc"])
    _clean_up(app, mongodb_uri)


def _clean_up(app, mongodb_uri) -> None:
    if mongodb_uri:
        with app.app_context():
            _empty_database()
    close_db()


def test_redis_outage_keeps_the_api_answering_and_caching_resumes(own_redis_app, caplog):
    import redis

    app, state = own_redis_app
    client = client_as(app)
    server = redis.Redis(port=state["port"])
    assert client.post("/api/projects", json={"name": "Before"}).status_code == 201
    assert client.get("/api/projects").status_code == 200
    assert server.keys("polymicro:catalog:*"), "reads are cached while Redis is up"

    _stop(state["proc"])
    with caplog.at_level(logging.INFO, logger="polymicro.common.caching"):
        statuses = [client.get("/api/projects").status_code for _ in range(3)]
        statuses.append(client.post("/api/projects", json={"name": "During"}).status_code)
        time.sleep(0.15)
        listed = client.get("/api/projects")
        statuses.append(listed.status_code)
        assert statuses == [200, 200, 200, 201, 200]
        assert [p["name"] for p in listed.json] == ["Before", "During"]
        assert caplog.text.count("cache unavailable") == 1

        state["proc"] = _start_redis(state["port"])
        time.sleep(0.15)
        after = client.get("/api/projects")
        assert after.status_code == 200
        assert [p["name"] for p in after.json] == ["Before", "During"]
        assert server.keys("polymicro:catalog:*"), "caching resumed"
        assert "caching resumes" in caplog.text
    assert caplog.text.count("cache unavailable") == 1


def test_unreachable_redis_from_the_start_is_not_an_error(mongodb_uri, caplog, monkeypatch):
    config = make_config(mongodb_uri, f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(config)
    caching.reset_state()
    client = client_as(app)
    with caplog.at_level(logging.WARNING, logger="polymicro.common.caching"):
        assert client.post("/api/projects", json={"name": "A"}).status_code == 201
        assert client.get("/api/projects").status_code == 200
        assert client.get("/api/projects").json[0]["name"] == "A"
    health = client.get("/api/health")
    _clean_up(app, mongodb_uri)
    assert caplog.text.count("cache unavailable") == 1
    assert health.status_code == 503
    assert health.json["checks"] == {"database": "ok", "cache": "unavailable"}
