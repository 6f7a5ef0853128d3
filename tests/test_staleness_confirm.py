"""A current entry is re-stamped when a reader finds it current (``Reader._confirm``):
its window then counts from that read, not from the start of its computation.

The promise is unchanged (polymicro/common/caching.py): a list read at time T reflects
every write acknowledged before T - window.  A write bumps the generation after it is
stored, so an entry still of the current generation at a read is exact as of that read.
Counted with ``caching.clock`` and the producer's calls; nothing sleeps.
"""

from __future__ import annotations

import pytest

from polymicro.common import caching
from polymicro.logs import service as logs
from tests.conftest import client_as
from tests.factories import make_service
from tests.staleness_helpers import log_writer
from tests.test_staleness import WINDOW_MS, Clock, _entry, as_someone_else


@pytest.fixture
def clock(monkeypatch, app):
    app.config["LIST_STALENESS_MS"] = WINDOW_MS
    monkeypatch.setattr(caching, "clock", Clock())
    yield caching.clock
    if caching._refresher is not None:  # let background refreshes finish
        caching._refresher.shutdown(wait=True)
        caching._refresher = None


@pytest.fixture
def api(app, client, clock):
    return log_writer(app, client)


@pytest.fixture(autouse=True)
def _no_refresh_at_half_the_window(monkeypatch):
    """These tests are about what a reader may be served and when an entry is re-stamped,
    reading at any age within the window: the refresh ahead at half the window (tested in
    tests/test_staleness.py) would recompute in between, so here an entry is refreshed
    only when three computations no longer fit in the window (instant ones here)."""
    monkeypatch.setattr(caching, "REFRESH_AHEAD_FRACTION", 1.0)


def _producer(calls: list):
    def produce():
        calls.append(1)
        return len(calls)

    return produce


@pytest.mark.usefixtures("ctx")
def test_service_a_current_entry_is_served_for_a_window_after_the_write_that_staled_it(app, clock):
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    calls: list = []
    assert caching.Reader(namespace).get("k", _producer(calls)) == 1
    clock.advance_ms(WINDOW_MS * 0.9)
    assert caching.Reader(namespace).get("k", _producer(calls)) == 1  # current: re-stamped
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    clock.advance_ms(WINDOW_MS * 0.9)  # 1.8 windows after the computation
    assert caching.Reader(namespace).get("k", _producer(calls)) == 1  # still inside
    assert calls == [1]
    clock.advance_ms(WINDOW_MS * 0.1 + 1)  # a window after the read that re-stamped it
    assert caching.Reader(namespace).get("k", _producer(calls)) == 2
    assert calls == [1, 1]


@pytest.mark.usefixtures("ctx")
def test_service_an_entry_is_re_stamped_at_most_once_per_eighth_of_a_window(app, clock):
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    caching.Reader(namespace).get("k", lambda: "v")
    stored = []
    real = caching._set_if_generation

    def counted(*args):
        stored.append(args[3][1])
        return real(*args)

    caching_set = pytest.MonkeyPatch()
    caching_set.setattr(caching, "_set_if_generation", counted)
    try:
        for _ in range(40):  # 40 reads, 1/40 of a window apart
            clock.advance_ms(WINDOW_MS / 40)
            assert caching.Reader(namespace).get("k", lambda: "never") == "v"
    finally:
        caching_set.undo()
    assert 4 <= len(stored) <= 8
    assert stored == sorted(stored)


@pytest.mark.usefixtures("ctx")
def test_service_a_stale_entry_is_never_re_stamped(app, clock):
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    caching.Reader(namespace).get("k", lambda: "old")
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    for _ in range(9):  # reads all along the window: served stale, never re-stamped
        clock.advance_ms(WINDOW_MS / 10)
        assert caching.Reader(namespace).get("k", lambda: "new") == "old"
    clock.advance_ms(WINDOW_MS / 10 + 1)  # a window after its computation
    assert caching.Reader(namespace).get("k", lambda: "new") == "new"


@pytest.mark.usefixtures("ctx")
def test_service_re_stamping_does_nothing_once_the_generation_moved(app, clock):
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    generation = caching._generation(namespace)
    key = caching._entry_key(namespace, "k")
    assert caching._set_if_generation(namespace, generation, key, (generation, 1.0, "a", 0))
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    assert not caching._set_if_generation(namespace, generation, key, (generation, 2.0, "b", 0))
    assert caching.cache.get(key)[2] == "a"


def test_service_exact_namespaces_are_never_re_stamped(app, ctx, clock, monkeypatch):
    stored = []
    monkeypatch.setattr(caching, "_set_if_generation", lambda *a: stored.append(a))
    caching.Reader("catalog").get("k", lambda: "v")
    clock.advance_ms(WINDOW_MS * 5)
    assert caching.Reader("catalog").get("k", lambda: "never") == "v"
    assert stored == []


def test_api_others_writes_lag_by_at_most_the_window_with_re_stamped_entries(app, api, clock):
    pid = api["project"]["id"]
    path = f"/api/logs/project/{pid}"
    viewer = client_as(app, "viewer")

    def listed():
        response = viewer.get(path)
        assert response.status_code == 200
        return [e["message"] for e in response.json], response.headers["X-Pagination"]

    assert listed()[0] == []
    clock.advance_ms(WINDOW_MS * 0.9)
    assert listed()[0] == []  # current: re-stamped now
    assert api["writer"].post("/api/logs", json={**api["entry"], "message": "x"}).status_code == 201
    clock.advance_ms(WINDOW_MS * 0.9)
    assert listed()[0] == []  # the write is younger than the window: may lag
    clock.advance_ms(WINDOW_MS * 0.1 + 1)  # a window after the write was acknowledged
    messages, pagination = listed()
    assert messages == ["x"]
    assert '"total": 1' in pagination


# --- a reader waiting for another's computation ------------------------------------------


def _stored_then_staled(app, svc, namespace: str, started_ms: float) -> str:
    """An entry computed from ``started_ms`` under the current generation, then made
    stale by another's write, with the refresh lease held by another reader."""
    generation = caching._generation(namespace)
    entry_key = caching._entry_key(namespace, "k")
    caching.cache.set(entry_key, (generation, started_ms, "computed", 2000.0))
    as_someone_else(app, lambda: logs.create_log(_entry(svc)))
    assert caching._add(caching._lease_key(entry_key), caching.LEASE_MS)
    return entry_key


@pytest.mark.usefixtures("ctx")
def test_service_a_waiting_reader_takes_a_computation_started_within_a_window_of_its_read(
    app, clock
):
    """The livelock it prevents: a computation longer than the window, under a steady
    writer, was stored already too old for every waiting reader to take."""
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    read_started = caching._now_ms()
    entry_key = _stored_then_staled(app, svc, namespace, read_started + 1)
    clock.advance_ms(WINDOW_MS * 3)  # the computation took three windows
    assert caching.Reader(namespace)._wait_for(entry_key, 1, read_started) == "computed"


@pytest.mark.usefixtures("ctx")
def test_service_a_waiting_reader_never_takes_a_computation_older_than_the_window(
    app, clock, monkeypatch
):
    monkeypatch.setattr(caching, "LEASE_MS", 100)  # the wait runs out after 100 ms
    svc = make_service()
    namespace = logs.LOGS.key(svc.project_id)
    read_started = caching._now_ms()
    entry_key = _stored_then_staled(app, svc, namespace, read_started - WINDOW_MS - 1)
    assert caching.Reader(namespace)._wait_for(entry_key, 1, read_started) is None
