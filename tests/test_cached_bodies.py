"""Large cached response bodies are stored in Redis once, by digest, apart from their
entries, and each worker keeps them (polymicro/common/bodies.py).

Through the API (auth on, a viewer reading, a real redis-server of this module) and at
the module: what a hit carries from Redis, what another worker (no copy yet) does, and a
body gone from Redis and from the worker."""

from __future__ import annotations

import gzip
import pickle

import pytest
import redis

from polymicro import create_app
from polymicro.common import bodies, cache_reads, caching
from polymicro.extensions import cache, close_db
from tests.conftest import client_as, free_port, make_config
from tests.test_caching_service import _start_redis, _stop

GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture(scope="module")
def redis_port():
    port = free_port()
    proc = _start_redis(port)
    yield port
    _stop(proc)


@pytest.fixture
def app(redis_port, monkeypatch):
    # Low enough that the gzipped variant of metrics_path is stored apart too.
    monkeypatch.setattr(bodies, "MIN_SIZE", 1024)
    app = create_app(make_config(None, f"redis://127.0.0.1:{redis_port}/0"))
    caching.reset_state()
    bodies.forget_local()
    with app.app_context():
        cache.clear()
    yield app
    bodies.forget_local()
    close_db()


@pytest.fixture
def server(redis_port):
    return redis.Redis(port=redis_port)


@pytest.fixture
def metrics_path(app):
    admin = client_as(app, "admin")
    project = admin.post("/api/projects", json={"name": "Shop"}).json
    for name in ("api", "web"):
        admin.post("/api/services", json={"project_id": project["id"], "name": name})
        points = [{"load": round(i * 7.31 % 97.3, 2), "memory": 10.0} for i in range(300)]
        admin.post(
            "/api/metrics/cpu",
            json={"project_id": project["id"], "service_name": name, "data": points},
        )
    return f"/api/metrics/cpu/project/{project['id']}"


class CountingMget:
    """The bytes each hit's MGET brought from Redis."""

    def __init__(self, monkeypatch):
        self.sizes: list[int] = []
        real = cache_reads.get_many

        def counted(*keys):
            values = real(*keys)
            self.sizes.append(sum(len(pickle.dumps(v)) for v in values))
            return values

        monkeypatch.setattr(cache_reads, "get_many", counted)


def body_keys(server) -> list[bytes]:
    return [k for k in server.keys("*") if b"body:" in k]


def test_a_hit_does_not_carry_the_large_body_from_redis(app, metrics_path, monkeypatch):
    viewer = client_as(app, "viewer")
    first = viewer.get(metrics_path)
    assert first.status_code == 200
    assert len(first.data) > 10_000
    mgets = CountingMget(monkeypatch)
    for _ in range(3):
        again = viewer.get(metrics_path)
        assert again.data == first.data
    assert mgets.sizes
    assert max(mgets.sizes) < 2_000  # the entry refers to the body; its bytes stay here


def test_both_variants_are_stored_once_in_redis_by_digest(app, metrics_path, server):
    viewer = client_as(app, "viewer")
    plain = viewer.get(metrics_path).data
    zipped = viewer.get(metrics_path, headers=GZIP)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == plain
    assert len(zipped.data) >= bodies.MIN_SIZE
    stored = {server.get(k)[1:] for k in body_keys(server)}
    assert {pickle.loads(v) for v in stored} == {plain, zipped.data}  # noqa: S301 - ours


def test_another_worker_fetches_the_body_once_then_serves_its_own_copy(
    app, metrics_path, monkeypatch
):
    viewer = client_as(app, "viewer")
    expected = viewer.get(metrics_path).data
    bodies.forget_local()  # another worker: the entry in Redis, no copy of the body
    fetched = []
    real_get = cache.get

    def counting_get(key):
        fetched.append(key)
        return real_get(key)

    monkeypatch.setattr(cache, "get", counting_get)
    for _ in range(3):
        assert viewer.get(metrics_path).data == expected
    assert [k for k in fetched if k.startswith("body:")] == [fetched[0]]


def test_a_body_gone_from_redis_and_the_worker_is_computed_and_stored_again(
    app, metrics_path, server
):
    viewer = client_as(app, "viewer")
    expected = viewer.get(metrics_path).data
    viewer.get(metrics_path, headers=GZIP)
    for key in body_keys(server):
        server.delete(key)
    bodies.forget_local()
    again = viewer.get(metrics_path)
    assert again.status_code == 200
    assert again.data == expected
    assert len(body_keys(server)) == 2  # both variants back
    bodies.forget_local()
    assert viewer.get(metrics_path).data == expected  # served from Redis's copy again


def test_a_write_still_changes_what_the_next_read_sees(app, metrics_path):
    admin = client_as(app, "admin")
    viewer = client_as(app, "viewer")
    before = viewer.get(metrics_path).json
    metric_id = before[0]["id"]
    assert 12.345 not in [p["load"] for m in before for p in m["data"]]
    admin.post(f"/api/metrics/cpu/{metric_id}/data", json=[{"load": 12.345}])
    after = admin.get(metrics_path).json  # the writer reads its own write
    assert 12.345 in [p["load"] for m in after for p in m["data"]]


# --- the module ------------------------------------------------------------------------------


def test_small_bodies_stay_in_their_entries(app):
    with app.app_context():
        entries = {"k": (b"x" * (bodies.MIN_SIZE - 1), None, None, None)}
        assert bodies.by_ref(entries) == entries


def test_without_redis_bodies_stay_in_their_entries():
    app = create_app(make_config())
    with app.app_context():
        entries = {"k": (b"x" * 100_000, None, None, None)}
        assert bodies.by_ref(entries) == entries
    close_db()


def test_a_ref_resolves_to_the_same_bytes_and_names_them_by_content(app):
    with app.app_context():
        body = bytes(range(256)) * 64
        stored = bodies.by_ref({"a": (body, None, "p", "e"), "b": (body, "gzip", None, None)})
        ref = stored["a"][0]
        assert isinstance(ref, bodies.Ref)
        assert stored["b"][0] == ref  # one digest for one body
        assert ref.size == len(body)
        bodies.forget_local()
        assert bodies.resolve(stored["a"]) == (body, None, "p", "e")


def test_a_ref_whose_body_is_nowhere_resolves_to_none(app):
    with app.app_context():
        entry = (bodies.Ref("0" * 32, 5000), None, None, None)
        assert bodies.resolve(entry) is None


def test_bodies_that_redis_could_not_take_leave_no_entry(app, monkeypatch):
    def down(*args):
        raise caching.CacheDown

    monkeypatch.setattr(caching, "_guard", down)
    with app.app_context():
        assert bodies.by_ref({"k": (b"x" * 10_000, None, None, None)}) is None


def test_the_workers_copies_are_bounded(app, monkeypatch):
    monkeypatch.setattr(bodies, "LOCAL_BYTES", 3 * bodies.MIN_SIZE)
    with app.app_context():
        refs = [
            bodies.by_ref({"k": (bytes([i]) * bodies.MIN_SIZE, None, None, None)})["k"][0]
            for i in range(5)
        ]
    assert len(bodies._local) == 3
    assert bodies._local_bytes == 3 * bodies.MIN_SIZE
    assert list(bodies._local) == [ref.digest for ref in refs[2:]]  # the oldest dropped
