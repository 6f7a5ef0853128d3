"""The total of a log list counted from the last count plus the rows since
(``pagination.AppendCount`` on ``caching.history``): exact after fresh appends, late
appends, deletes, updates, a move of the retention horizon and a cache outage; and
cheaper only where it may be: counted, which ranges each count asked the database for.

Time: the injectable clock (``polymicro.common.clock``) moves by hand; nothing sleeps.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from polymicro.common import caching, clock
from polymicro.common.pagination import AppendCount, NewestFirst
from polymicro.logs import service as logs
from tests.conftest import client_as
from tests.factories import log_body, make_key, make_logs, make_service
from tests.log_helpers import plain_query


@pytest.fixture
def manual(app):
    """The clock, set near the real time (a TTL index, mongomock's too, deletes by the
    real time) at 10.5 s past a minute: the horizon stays put for the tests' seconds."""
    start = clock.SystemClock().now().replace(second=10, microsecond=500000)
    app.config["RETENTION_LOGS_DAYS"] = 30
    AppendCount._kept.clear()
    with app.app_context(), clock.use(clock.ManualClock(start)) as manual_clock:
        yield manual_clock


@pytest.fixture
def asked(monkeypatch) -> list:
    """The time bounds of every counting query of a log list, in order: ``(at_least,
    below)``; ``(None, None)`` is the whole list."""
    bounds: list = []
    query = logs._query

    def recording(*args, at_least=None, below=None, **kwargs):
        bounds.append((at_least, below))
        return query(*args, at_least=at_least, below=below, **kwargs)

    monkeypatch.setattr(logs, "_query", recording)
    return bounds


def _count(asked: list, **filters) -> int:
    """A list's total, computed (never from the response cache), with only the bounds
    of this count left in ``asked``."""
    query = logs.list_logs(**filters).query
    assert isinstance(query, NewestFirst)
    asked.clear()
    return query.count()


def _truth(**filters) -> int:
    """The same total as one plain query (no AppendCount)."""
    return plain_query(**filters).queryset.count()


def _store(svc, count: int, *, ago: timedelta = timedelta(0), severity: str = "info"):
    now = clock.now()
    return make_logs(
        svc,
        [{"message": f"m{i}", "timestamp": now - ago, "severity": severity} for i in range(count)],
    )


def _bound(now: datetime) -> datetime:
    return now - AppendCount.SLACK


def test_service_a_count_after_fresh_appends_reads_only_the_rows_since_its_bound(manual, asked):
    start = clock.now()
    svc = make_service()
    pid = svc.project_id
    _store(svc, 30, ago=timedelta(hours=3))
    assert _count(asked, project_id=pid) == 30 == _truth(project_id=pid)
    first = _bound(start)
    assert asked == [(None, first), (first, None)]  # nothing kept yet: below, then above

    manual.advance(1)
    _store(svc, 4)  # fresh: at the time of the write
    assert _count(asked, project_id=pid) == 34 == _truth(project_id=pid)
    second = _bound(start + timedelta(seconds=1))
    assert asked == [(first, second), (second, None)]  # never the rows below `first` again

    manual.advance(1)
    _store(svc, 2)
    assert _count(asked, project_id=pid) == 36 == _truth(project_id=pid)
    assert asked[0][0] == second


def test_service_a_late_append_older_than_the_floor_makes_the_next_count_whole(manual, asked):
    svc = make_service()
    pid = svc.project_id
    _store(svc, 10, ago=timedelta(hours=1))
    assert _count(asked, project_id=pid) == 10
    manual.advance(1)
    _store(svc, 3, ago=timedelta(minutes=5))  # a shipper five minutes late
    assert _count(asked, project_id=pid) == 13 == _truth(project_id=pid)
    assert asked[0] == (None, _bound(clock.now()))  # counted whole again
    manual.advance(1)
    _store(svc, 1)
    assert _count(asked, project_id=pid) == 14 == _truth(project_id=pid)
    assert asked[0][0] is not None  # and incremental after it


def test_service_an_append_exactly_at_the_floor_is_counted_once(manual, asked):
    start = clock.now()
    svc = make_service()
    pid = svc.project_id
    assert _count(asked, project_id=pid) == 0
    floor = _bound(start)
    manual.advance(1)
    make_logs(svc, [{"message": "at the floor", "timestamp": floor}])
    assert _count(asked, project_id=pid) == 1 == _truth(project_id=pid)
    assert asked[0][0] == floor  # incremental: a row at the floor is not below it


def test_service_deletes_and_updates_make_the_next_count_whole_and_exact(manual, asked):
    svc = make_service()
    pid = svc.project_id
    ids = _store(svc, 6, ago=timedelta(hours=2))
    assert _count(asked, project_id=pid) == 6
    assert _count(asked, project_id=pid, severity=["error"]) == 0
    manual.advance(1)
    logs.delete_log(logs.get_log(ids[0]))
    assert _count(asked, project_id=pid) == 5 == _truth(project_id=pid)
    assert asked[0] == (None, _bound(clock.now()))
    manual.advance(1)
    logs.update_log(logs.get_log(ids[1]), {"severity": "error"})
    assert _count(asked, project_id=pid, severity=["error"]) == 1
    assert asked[0][0] is None
    assert _truth(project_id=pid, severity=["error"]) == 1
    manual.advance(1)
    logs.delete_logs(service_id=svc.id)
    assert _count(asked, project_id=pid) == 0 == _truth(project_id=pid)


def test_service_a_move_of_the_retention_horizon_makes_the_next_count_whole(manual, asked):
    svc = make_service()
    pid = svc.project_id
    # 30 days are kept: these rows leave the list when the horizon passes them
    _store(svc, 5, ago=timedelta(days=30) - timedelta(seconds=90))
    _store(svc, 2, ago=timedelta(hours=1))
    assert _count(asked, project_id=pid) == 7
    manual.advance(120)  # the horizon moved by two minutes: without a write
    assert _count(asked, project_id=pid) == 2 == _truth(project_id=pid)
    assert asked[0][0] is None


def test_service_without_the_cache_every_count_is_whole(manual, asked, monkeypatch):
    svc = make_service()
    pid = svc.project_id
    _store(svc, 3, ago=timedelta(hours=1))
    assert _count(asked, project_id=pid) == 3
    monkeypatch.setattr(caching, "history", lambda namespace, floor: None)
    manual.advance(1)
    _store(svc, 2)
    assert _count(asked, project_id=pid) == 5 == _truth(project_id=pid)
    assert asked == [(None, None)]


def test_service_filtered_and_unscoped_lists_count_incrementally_and_exactly(manual, asked):
    svc = make_service()
    other = make_service()
    pid = svc.project_id
    _store(svc, 4, ago=timedelta(hours=1), severity="error")
    _store(other, 3, ago=timedelta(hours=1))
    assert _count(asked, project_id=pid, severity=["error"]) == 4
    assert _count(asked, q="m1") == 2
    manual.advance(1)
    _store(svc, 2, severity="error")
    _store(other, 1)
    assert _count(asked, project_id=pid, severity=["error"]) == 6
    assert asked[0][0] is not None
    assert _truth(project_id=pid, severity=["error"]) == 6
    assert _count(asked, q="m1") == 3 == _truth(q="m1")
    assert asked[0][0] is not None


def test_service_history_moves_for_every_write_but_an_append_at_or_after_the_floor(manual):
    start = clock.now()
    namespace = logs.LOGS.key(make_service().project_id)
    floor = start - timedelta(seconds=2)
    first = caching.history(namespace, floor)
    assert first is not None
    caching.bump(namespace, appended_from=floor)
    caching.bump(namespace, appended_from=floor + timedelta(hours=1))
    assert caching.history(namespace, floor) == first
    caching.bump(namespace, appended_from=floor - timedelta(milliseconds=1))
    second = caching.history(namespace, floor)
    assert second != first
    caching.bump(namespace)  # any other write
    assert caching.history(namespace, floor) != second
    # the floor only rises: a lower one asked later does not let older appends through
    third = caching.history(namespace, floor - timedelta(hours=1))
    caching.bump(namespace, appended_from=floor - timedelta(minutes=1))
    assert caching.history(namespace, floor) != third
    assert caching.history("catalog", floor) is None  # keeps no history


def test_api_totals_stay_exact_while_a_key_appends_and_a_viewer_reads(app, manual, asked):
    start = clock.now()
    app.config["LIST_STALENESS_MS"] = 0  # exact lists: this is about totals, not staleness
    svc = make_service()
    key = make_key(project=type("P", (), {"id": svc.project_id})())
    writer = app.test_client()
    viewer = client_as(app, "viewer")
    admin = client_as(app, "admin")
    path = f"/api/logs/project/{svc.project_id}?page_size=5"

    def post(**fields):
        body = log_body(svc, **fields)
        answer = writer.post("/api/logs", json=body, headers={"X-API-Key": key["key"]})
        assert answer.status_code == 201, answer.get_json()
        return answer.get_json()["id"]

    def total() -> int:
        answer = viewer.get(path)
        assert answer.status_code == 200
        return int(answer.headers["X-Pagination"].split('"total": ')[1].split(",")[0].strip("}"))

    old = (start - timedelta(hours=1)).isoformat() + "Z"
    for _ in range(3):
        post(timestamp=old)
    assert total() == 3
    for second in range(3):
        manual.advance(1)
        post()  # no timestamp: the time of receipt
        asked.clear()
        assert total() == 4 + second
        # incremental: the rows since the last bound, never the rows below it again
        assert any(low is not None for low, _ in asked)
        assert not any(low is None and below is not None for low, below in asked)
    manual.advance(1)
    late = post(timestamp=(clock.now() - timedelta(minutes=10)).isoformat() + "Z")
    assert total() == 7
    assert admin.delete(f"/api/logs/{late}").status_code == 204
    assert total() == 6 == _truth(project_id=svc.project_id)


def test_service_counts_while_threads_append_never_overcount_and_end_exact(app):
    """Real threads (on the wire run: SecantusDB and Redis) append fresh and late logs
    while another counts the project's logs again and again: each count is exact as of
    a moment (never above what was stored, never below an earlier count: rows are only
    added), and the count after the writers stop is the number stored."""
    app.config["RETENTION_LOGS_DAYS"] = 30
    AppendCount._kept.clear()
    with app.app_context():
        svc = make_service()
    writers, batches, size = 3, 12, 5
    counts: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            with app.app_context():
                for batch in range(batches):
                    late = (index + batch) % 4 == 0  # a quarter of the batches 10 s late
                    when = clock.now() - timedelta(seconds=10 if late else 0)
                    make_logs(svc, [{"message": f"w{index}", "timestamp": when}] * size)
        except BaseException as exc:
            errors.append(exc)

    def count() -> None:
        try:
            with app.app_context():
                while not done.is_set():
                    counts.append(logs.list_logs(project_id=svc.project_id).query.count())
        except BaseException as exc:
            errors.append(exc)

    counter = threading.Thread(target=count)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    counter.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    counter.join(timeout=120)
    assert not errors, errors
    stored = writers * batches * size
    assert len(counts) > 1
    assert counts == sorted(counts)
    assert counts[-1] <= stored
    with app.app_context():
        assert logs.list_logs(project_id=svc.project_id).query.count() == stored
        assert _truth(project_id=svc.project_id) == stored
