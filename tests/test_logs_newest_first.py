"""Pages of a log list from a narrowed time range (``pagination.NewestFirst``): the same
rows as the whole query, asked of a range that holds the page (SecantusDB sorts every
row of the range it is asked), and the whole query whenever the range falls short.
Counted: which query answered each page.  Also: ``since`` older than the retention
horizon never shows what retention no longer keeps.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from polymicro.common import clock
from polymicro.common.pagination import BOUNDARY_MARGIN, NewestFirst
from polymicro.logs import service as logs
from tests.conftest import client_as
from tests.factories import make_logs, make_service
from tests.log_helpers import plain_query

# The test clock starts 60 days after the real time, on the hour.  A TTL index deletes
# by the real time (mongomock's as it reads, SecantusDB's each minute), so rows dated
# from a fixed day expire on their own once that day is 30 days past: the horizon test
# below then failed from 2026-11-30 12:00 on, with "kept" gone.  Ahead of the real time
# no TTL deletes any of these rows, and only the horizon (by this clock) hides "past".
START = clock.SystemClock().now().replace(minute=0, second=0, microsecond=0) + timedelta(days=60)


@pytest.fixture
def manual(app):
    app.config["RETENTION_LOGS_DAYS"] = 30
    with app.app_context(), clock.use(clock.ManualClock(START)) as manual_clock:
        yield manual_clock


def _store(svc, seconds: list[float]) -> None:
    """One entry per offset (message "s<offset>"), at START + offset seconds."""
    make_logs(
        svc, [{"message": f"s{s}", "timestamp": START + timedelta(seconds=s)} for s in seconds]
    )


def _counted(query: NewestFirst) -> list:
    """Wrap the narrowed query of ``query``: the bounds it was asked with."""
    asked: list = []
    narrowed = query.narrowed
    query.narrowed = lambda t: asked.append(t) or narrowed(t)
    return asked


def _messages(rows) -> list[str]:
    return [row["message"] for row in rows]


def _whole(project_id, window: slice) -> list[str]:
    return _messages(plain_query(project_id=project_id).queryset[window])


def test_service_a_page_comes_from_the_range_since_its_last_row_once_known(manual):
    svc = make_service()
    # ties on the timestamp (the id breaks them) across the page boundary
    _store(svc, [0, 1, 2, 3, 3, 3, 4, 5, 6, 7])
    query = logs.list_logs(project_id=svc.project_id).query
    asked = _counted(query)
    first = _messages(query[0:4])
    assert first == _whole(svc.project_id, slice(0, 4))
    assert asked == []  # nothing known yet: the whole query
    _store(svc, [8, 9])  # newer rows
    query = logs.list_logs(project_id=svc.project_id).query
    asked = _counted(query)
    assert _messages(query[0:4]) == _whole(svc.project_id, slice(0, 4)) == ["s9", "s8", "s7", "s6"]
    assert asked == [START + timedelta(seconds=4) - BOUNDARY_MARGIN]  # the previous last row
    assert _messages(query[2:6]) == _whole(svc.project_id, slice(2, 6))


def test_service_a_range_that_falls_short_asks_the_whole_query(manual):
    svc = make_service()
    _store(svc, [0, 1, 2, 3, 4, 5])
    query = logs.list_logs(project_id=svc.project_id).query
    assert _messages(query[0:3]) == ["s5", "s4", "s3"]
    for row in logs.list_logs(project_id=svc.project_id).query.queryset.filter(
        message__in=["s4", "s5"]
    ):
        logs.delete_log(logs.get_log(row["_id"]))
    query = logs.list_logs(project_id=svc.project_id).query
    asked = _counted(query)
    assert _messages(query[0:3]) == ["s3", "s2", "s1"]  # the range since s3 holds one row
    assert asked == [START + timedelta(seconds=3) - BOUNDARY_MARGIN]


def test_service_since_older_than_the_horizon_shows_nothing_retention_no_longer_keeps(manual):
    svc = make_service()
    make_logs(
        svc,
        [
            {"message": "kept", "timestamp": START - timedelta(days=1)},
            {"message": "past", "timestamp": START - timedelta(days=40)},
        ],
    )
    since = START - timedelta(days=60)
    assert _messages(logs.list_logs(project_id=svc.project_id, since=since)[0:10]) == ["kept"]
    assert logs.list_logs(project_id=svc.project_id, since=since).count() == 1
    assert _messages(logs.list_logs(since=since)[0:10]) == ["kept"]


def test_api_pages_and_totals_of_a_growing_project_stay_exact(app, manual):
    app.config["LIST_STALENESS_MS"] = 0  # exact lists: this is about pages, not staleness
    admin = client_as(app, "admin")
    viewer = client_as(app, "viewer")
    svc = make_service()
    path = f"/api/logs/project/{svc.project_id}?page_size=3"
    _store(svc, [0, 1, 2, 3, 4])
    first = viewer.get(path)
    assert [e["message"] for e in first.json] == ["s4", "s3", "s2"]
    _store(svc, [5, 6])
    again = admin.get(path)
    assert again.status_code == 200
    assert [e["message"] for e in again.json] == ["s6", "s5", "s4"]
    assert '"total": 7' in again.headers["X-Pagination"]
    second = admin.get(path + "&page=2")
    assert [e["message"] for e in second.json] == ["s3", "s2", "s1"]


def test_service_a_page_ending_at_the_bound_asks_the_whole_query(manual):
    """SecantusDB's ``$gte`` on the (project, -timestamp) index leaves out a row equal to
    the bound: a page from the narrowed range is taken only if it ends strictly after
    the bound."""
    svc = make_service()
    _store(svc, [1, 2.998, 2.998, 2.999, 4, 5])
    assert _messages(logs.list_logs(project_id=svc.project_id).query[0:3]) == [
        "s5",
        "s4",
        "s2.999",
    ]
    for row in logs.list_logs(project_id=svc.project_id).query.queryset.filter(message="s4"):
        logs.delete_log(logs.get_log(row["_id"]))
    query = logs.list_logs(project_id=svc.project_id).query
    narrowed = query.narrowed

    def like_secantus(t):  # the last of the rows equal to the bound is left out
        rows = narrowed(t)
        at_bound = [row["_id"] for row in rows.filter(timestamp=t)]
        return rows.filter(id__ne=max(at_bound)) if at_bound else rows

    query.narrowed = like_secantus
    whole = plain_query(project_id=svc.project_id).queryset[0:3]
    assert [row["id"] for row in query[0:3]] == [row["_id"] for row in whole]


def test_api_logs_exactly_at_the_horizon_since_and_until_are_listed_and_counted(app):
    """SecantusDB's ``$gte`` on the (project, -timestamp) index left out the rows equal
    to the bound: a log exactly at the retention horizon, or at ``since``, was missing
    from the list and its total (found on the wire run, 2026-11-30)."""
    app.config["RETENTION_LOGS_DAYS"] = 30
    # near the real time: a TTL index deletes by the real time
    now = clock.SystemClock().now().replace(second=10, microsecond=0)
    with app.app_context(), clock.use(clock.ManualClock(now)):
        svc = make_service()
        cut = logs.retention.horizon(logs.RETENTION, svc.project_id)
        since, until = now - timedelta(hours=2), now - timedelta(hours=1)
        make_logs(
            svc,
            [
                {"message": "before the horizon", "timestamp": cut - timedelta(milliseconds=1)},
                {"message": "at the horizon", "timestamp": cut},
                {"message": "at since", "timestamp": since},
                {"message": "at until", "timestamp": until},
                {"message": "after until", "timestamp": until + timedelta(milliseconds=1)},
            ],
        )
        whole = logs.list_logs(project_id=svc.project_id)
        assert _messages(whole[0:10]) == [
            "after until",
            "at until",
            "at since",
            "at the horizon",
        ]
        assert whole.count() == 4
        ranged = logs.list_logs(project_id=svc.project_id, since=since, until=until)
        assert _messages(ranged[0:10]) == ["at until", "at since"]
        assert ranged.count() == 2
        viewer = client_as(app, "viewer")
        answer = viewer.get(
            f"/api/logs/project/{svc.project_id}",
            query_string={"since": since.isoformat() + "Z", "until": until.isoformat() + "Z"},
        )
        assert answer.status_code == 200
        assert [e["message"] for e in answer.json] == ["at until", "at since"]
        assert '"total": 2' in answer.headers["X-Pagination"]
        everything = viewer.get(f"/api/logs/project/{svc.project_id}")
        assert "at the horizon" in [e["message"] for e in everything.json]
