"""Counts, not times, of a dashboard's list reads while a writer streams logs in
(issue 9).  A scripted mix: a writer sends 20 single ``POST /api/logs`` per second (with
the project's API key) and a viewer reads a project's logs, or the filtered logs, five
times between two writes, for two seconds; time moves only by ``caching.clock`` and the
process clock (the retention horizon), retention on as in production.

What is counted: how many reads the response cache answered (``Reader.peek`` found an
entry it may serve) and how many were computed; how many list queries (a count, a page)
reached the database; how many cache bumps, catalog lookups and inserts each write made.
A computation is given a fixed duration (``Reader._took``), the one input of the
refresh-ahead rule.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from polymicro.common import caching
from polymicro.common import clock as common_clock
from polymicro.common.clock import ManualClock
from polymicro.logs import service as logs
from tests.conftest import client_as
from tests.staleness_helpers import count_list_queries, count_lookups, log_writer

WINDOW_MS = 1000
WRITES = 40  # 2 s at 20 writes/s
READS_PER_WRITE = 5


class Clocks:
    """``caching.clock`` (float seconds) and the process clock, moved together."""

    def __init__(self, manual: ManualClock):
        self.manual = manual
        self.now = (manual.now() - datetime(1970, 1, 1)).total_seconds()

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000
        self.manual.advance(ms / 1000)


def _drain() -> None:
    """Let scheduled background refreshes finish (they run on a thread pool)."""
    if caching._refresher is not None:
        caching._refresher.shutdown(wait=True)
        caching._refresher = None


def _count(counter: dict, name: str) -> None:
    counter[name] = counter.get(name, 0) + 1


@pytest.fixture
def mix(app, client, monkeypatch, request):
    app.config["LIST_STALENESS_MS"] = WINDOW_MS
    app.config["RETENTION_LOGS_DAYS"] = 30
    # 10 s past a minute of the real time (or the second given): the horizon (rounded to
    # the minute) stays put for the 2 s of the mix, whatever the real time.
    second = getattr(request, "param", 10.0)
    start = datetime.utcnow().replace(second=0, microsecond=0) + timedelta(seconds=second)
    manual = ManualClock(start)
    clocks = Clocks(manual)
    monkeypatch.setattr(caching, "clock", clocks)
    counts: dict = {"served": 0, "computed": 0, "db": {}, "bumps": {}, "cached_reads": {}}

    count_list_queries(monkeypatch, lambda kind: _count(counts["db"], kind))
    count_lookups(monkeypatch, counts)
    bump = caching.bump

    def counted_bump(*namespaces, **options):
        _count(counts["bumps"], "calls")
        for namespace in namespaces:
            _count(counts["bumps"], namespace.split(":")[0])
        return bump(*namespaces, **options)

    monkeypatch.setattr(caching, "bump", counted_bump)
    get = caching.Reader.get

    def counted_get(self, key, producer):
        def computed():
            _count(counts["cached_reads"], self.namespace.split(":")[0])
            return producer()

        return get(self, key, computed)

    monkeypatch.setattr(caching.Reader, "get", counted_get)
    insert_row = logs.insert_row
    monkeypatch.setattr(
        logs, "insert_row", lambda *a, **kw: _count(counts["db"], "insert") or insert_row(*a, **kw)
    )

    world = log_writer(app, client)
    with common_clock.use(manual):
        yield {
            **world,
            "clocks": clocks,
            "counts": counts,
        }
    _drain()


def _reset(counts: dict) -> None:
    for name, value in counts.items():
        if isinstance(value, dict):
            value.clear()
        else:
            counts[name] = 0


def _run_mix(app, mix, path: str) -> tuple[dict, dict]:
    """The scripted mix; returns the counts of the reads and those of the writes."""
    viewer = client_as(app, "viewer")
    viewer.environ_base["HTTP_ACCEPT_ENCODING"] = "gzip"
    # Warm: the writer's references and the list, as a dashboard that was already open.
    assert mix["writer"].post("/api/logs", json={**mix["entry"], "message": "-"}).status_code == 201
    assert viewer.get(path).status_code == 200
    counts = mix["counts"]
    writes: dict = {"db": {}, "bumps": {}, "cached_reads": {}}
    for i in range(WRITES):
        _reset(counts)
        posted = mix["writer"].post("/api/logs", json={**mix["entry"], "message": str(i)})
        assert posted.status_code == 201
        for part in writes:
            for name, value in counts[part].items():
                writes[part][name] = writes[part].get(name, 0) + value
        _reset(counts)
        for _ in range(READS_PER_WRITE):
            mix["clocks"].advance_ms(1000 / 20 / READS_PER_WRITE)
            assert viewer.get(path).status_code == 200
            _drain()
            reads_so_far = mix.setdefault("reads", {"served": 0, "computed": 0, "db": {}})
            reads_so_far["served"] += counts["served"]
            reads_so_far["computed"] += counts["computed"]
            for name, value in counts["db"].items():
                reads_so_far["db"][name] = reads_so_far["db"].get(name, 0) + value
            _reset(counts)
    return mix["reads"], writes


def _paths(project_id: str) -> dict[str, str]:
    return {
        "project": f"/api/logs/project/{project_id}",
        "filtered": f"/api/logs?project_id={project_id}&severity=error",
    }


@pytest.mark.parametrize("which", ["project", "filtered"])
@pytest.mark.parametrize(
    ("took_ms", "refreshes"),
    # quick lists: about twice a window (REFRESH_AHEAD_FRACTION); slow: as soon as stale
    [(100, 3), (300, 19)],
)
def test_reads_under_ingest_are_served_from_the_cache(
    app, mix, monkeypatch, which, took_ms, refreshes
):
    monkeypatch.setattr(caching.Reader, "_took", lambda self: took_ms)
    reads, writes = _run_mix(app, mix, _paths(mix["project"]["id"])[which])
    # Every one of the 200 reads is answered from the response cache (none waits for a
    # computation); the database sees only the background refreshes, a count and a page
    # each: at most one per half window for a list that computes in 100 ms.
    assert reads == {
        "served": WRITES * READS_PER_WRITE,
        "computed": 0,
        "db": {"count": refreshes, "page": refreshes},
    }
    # Each write: one insert, one bump call for the project's namespace and the unscoped
    # one (one Lua script), and no cached read computed (the project, service and API
    # key lookups are cached and no write bumps them).
    assert writes == {
        "db": {"insert": WRITES},
        "bumps": {"calls": WRITES, "logs": 2 * WRITES},
        "cached_reads": {},
    }


@pytest.mark.usefixtures("ctx")
def test_a_lease_taken_again_at_once_does_not_take_the_cache_down(app, monkeypatch):
    """Refresh ahead under a steady writer: a reader releases its lease and another
    reader takes it in the same instant.  cachelib's ``delete_many`` then found the key
    again and raised, which counted as an outage: the worker answered every read from
    the database for ``RETRY_SECONDS``.  Counted: after the release the cache is still
    in use, and the next read is served from it."""
    backend = caching.cache.cache
    entry_key = caching._entry_key("logs:x", "k")
    lease = caching._lease_key(entry_key)

    def taken_again(delete):
        def wrapped(*keys):
            done = delete(*keys)
            assert caching._add(lease, caching.LEASE_MS)  # another reader, at once
            return done

        return wrapped

    if caching._is_redis():
        client = backend._write_client
        monkeypatch.setattr(client, "delete", taken_again(client.delete))
    else:
        monkeypatch.setattr(backend, "delete", taken_again(backend.delete))
    app.config["LIST_STALENESS_MS"] = WINDOW_MS  # a reader that misses takes the lease
    reader = caching.Reader("logs:x")
    computed = []
    assert reader.get("k", lambda: computed.append(1) or "v") == "v"  # stores, releases
    assert reader._leased == []
    assert caching._breaker.down_until == 0.0  # not taken for an outage
    assert caching.Reader("logs:x").get("k", lambda: computed.append(1) or "again") == "v"
    assert computed == [1]


@pytest.mark.parametrize("mix", [59.5], indirect=True)  # the horizon moves 0.5 s in
@pytest.mark.parametrize("which", ["project", "filtered"])
def test_the_horizon_moving_by_a_minute_changes_no_key(app, mix, monkeypatch, which):
    """The retention horizon moves by the minute.  It was part of every list's key, so
    at each minute every list was missing for every reader at once, and each of them
    waited for the database (``make bench-mixed`` counted 8 readers finding no entry
    in one phase).  Now the minute is the entries' epoch: the previous minute's entry is
    served like one of an older generation, within the window, and refreshed ahead."""
    monkeypatch.setattr(caching.Reader, "_took", lambda self: 100)
    reads, _ = _run_mix(app, mix, _paths(mix["project"]["id"])[which])
    assert reads["served"] == WRITES * READS_PER_WRITE
    assert reads["computed"] == 0
    assert reads["db"] == {"count": 3, "page": 3}  # as with no minute (the test above)
